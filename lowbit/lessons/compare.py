"""The seeds' prompts on several catalog models, graded side by side (`invoke compare`, lesson 07).

Each model (a real offline model, a replica, a fetched R1 quant or distill, a GGUF path) is loaded once
through llama.cpp's bindings; each prompt is rendered with the model's own chat template and generated
with DeepSeek's recommended sampling (the catalog's defaults: temperature 0.6, top-p 0.95, min-p 0.01,
seed 3407). The `<think>` part is split off and measured, the answer graded by the prompt's checker
(`lowbit.run.seeds`). Results: a models x prompts table (pass/fail, tokens/s, thinking length), a plot,
and a JSON record to compare across machines, in `runs/<time>-compare/` with every answer and every
extracted program or page (and its screenshots).
"""

from __future__ import annotations

import gc
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowbit import LowbitError, flag_number
from lowbit.lessons.quickstart import OFFLINE_HINT
from lowbit.lessons.runner import new_run_dir
from lowbit.machine import machine_summary
from lowbit.models.catalog import locate, resolve_model
from lowbit.models.entries import sampling_defaults
from lowbit.run.generation import generate, load_model
from lowbit.run.seeds import SeedPrompt, grade, select_prompts, split_thinking
from lowbit.ui import print_table, step

DEFAULT_MODELS = "smollm2,gemma3-270m,r1"


@dataclass
class Cell:
    """One model's answer to one prompt, graded."""

    model: str
    prompt: str
    passed: bool
    detail: str
    generated_tokens: int
    tokens_per_s: float
    prompt_tokens: int
    thinking_tokens: int
    thinking_chars: int
    answer_chars: int
    stop_reason: str
    seconds: float
    answer_file: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Comparison:
    models: list[str]
    prompts: list[str]
    sampling: dict
    cells: list[Cell]
    machine: dict
    created: str
    out_dir: str

    def cell(self, model: str, prompt: str) -> Cell:
        return next(c for c in self.cells if c.model == model and c.prompt == prompt)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "cells"}, "cells": [asdict(c) for c in self.cells]}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "model"


def _parse_list(value: str | list[str] | None, default: str) -> list[str]:
    items = value if isinstance(value, list) else (value or default).split(",")
    return [s.strip() for s in items if s and s.strip()]


def run_prompt(llm, model: str, prompt: SeedPrompt, max_tokens: int, sampling: dict, out_dir: Path,
               chat: bool = True) -> Cell:
    """Generate one answer, split off the thinking, grade the answer, keep the text (and code artifacts)."""

    t0 = time.monotonic()
    g = generate(llm, prompt.text, n_predict=max_tokens, temperature=sampling["temp"], min_p=sampling["min_p"],
                 top_p=sampling["top_p"], seed=int(sampling["seed"]), chat=chat)
    thinking, answer = split_thinking(g.text)
    think_tokens = len(llm.tokenize(thinking.encode("utf-8"), add_bos=False, special=False)) if thinking else 0
    folder = out_dir / "answers" / _safe(model)
    folder.mkdir(parents=True, exist_ok=True)
    answer_file = folder / f"{prompt.id}.md"
    answer_file.write_text(g.text, encoding="utf-8")
    check = grade(prompt.id, answer, keep=out_dir / "artifacts" / _safe(model) / prompt.id)
    return Cell(model, prompt.id, check.passed, check.detail, g.n_generated, round(g.generation_tokens_per_s, 2),
                g.n_prompt, think_tokens, len(thinking), len(answer), g.stop_reason,
                round(time.monotonic() - t0, 2), str(answer_file.relative_to(out_dir)),
                json.loads(json.dumps(check.data, default=str)))


def compare(models: str | list[str] | None = None, prompts: str | list[str] | None = "seeds",
            max_tokens: int | None = None, threads: int = 0, out_dir: Path | None = None,
            progress: bool = True) -> Comparison:
    """Run `prompts` (ids, or `seeds` for all) on `models` (catalog names or paths); grade every answer.

    `max_tokens` caps each prompt's own budget (SeedPrompt.max_tokens), e.g. to keep CI short.
    """

    names = _parse_list(models, DEFAULT_MODELS)
    chosen = select_prompts(prompts)
    if not names:
        raise LowbitError("no models to compare; pass e.g. --models smollm2,gemma3-270m,r1")
    if max_tokens is not None and int(max_tokens) < 1:
        raise LowbitError(f"max_tokens must be at least 1, not {max_tokens}")
    # every model on disk before the first token (fetches a real model, builds a replica; a missing Hub
    # model fails here with the command that fetches it, not after an hour of the others)
    located = [(resolve_model(name), locate(name, obtain=True, hint=OFFLINE_HINT)) for name in names]
    sampling = sampling_defaults()
    out = Path(out_dir) if out_dir else new_run_dir("compare")
    out.mkdir(parents=True, exist_ok=True)
    cells: list[Cell] = []
    total, done = len(names) * len(chosen), 0
    for resolved, path in located:
        budget = max(p.max_tokens if max_tokens is None else min(p.max_tokens, int(max_tokens)) for p in chosen)
        llm = load_model(path, threads=threads, n_ctx=budget + 1024, seed=int(sampling["seed"]))
        chat = bool(llm.metadata.get("tokenizer.chat_template"))
        try:
            for prompt in chosen:
                n = prompt.max_tokens if max_tokens is None else min(prompt.max_tokens, int(max_tokens))
                cell = run_prompt(llm, resolved.name, prompt, n, sampling, out, chat=chat)
                cells.append(cell)
                done += 1
                if progress:
                    print(f"[{done}/{total}] {resolved.name} × {prompt.id}: {'PASS' if cell.passed else 'fail'} "
                          f"({cell.generated_tokens} tokens at {cell.tokens_per_s:.1f} tok/s, thinking "
                          f"{cell.thinking_tokens} tokens) {cell.detail[:100]}", flush=True)
        finally:
            del llm
            gc.collect()
    result = Comparison([c for c in dict.fromkeys(c.model for c in cells)], [p.id for p in chosen], sampling, cells,
                        machine_summary(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), str(out))
    (out / "compare.json").write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False, default=str) + "\n",
                                      encoding="utf-8")
    (out / "table.md").write_text(markdown(result) + "\n", encoding="utf-8")
    import matplotlib.pyplot as plt  # optional (the `notebooks` extra): imported on use

    plt.close(plot(result, out / "compare.png"))
    return result


def load(path: str | Path) -> Comparison:
    """A comparison back from its `compare.json` (e.g. another machine's)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = [Cell(**c) for c in data.pop("cells")]
    return Comparison(cells=cells, **data)


def rows(result: Comparison) -> list[list[Any]]:
    """Models x prompts: each cell 'PASS'/'fail' with tok/s and thinking tokens."""
    out = []
    for m in result.models:
        row: list[Any] = [m]
        for p in result.prompts:
            c = result.cell(m, p)
            row.append(f"{'PASS' if c.passed else 'fail'} · {c.tokens_per_s:.0f} tok/s · think {c.thinking_tokens}")
        row.append(f"{sum(result.cell(m, p).passed for p in result.prompts)}/{len(result.prompts)}")
        out.append(row)
    return out


def prompt_rows(prompts: str | list[str] | None = "seeds") -> list[tuple[str, str, str, str]]:
    """(id, prompt, where it is from, what a right answer is) for the lesson's table."""
    return [(p.id, p.text if len(p.text) < 90 else p.text[:87] + "…", p.source, p.expects)
            for p in select_prompts(prompts)]


def verdicts(result: Comparison) -> list[tuple[str, str, str, str]]:
    """(model, prompt, PASS/fail, the checker's detail) per cell."""
    return [(c.model, c.prompt, "PASS" if c.passed else "fail", c.detail[:160]) for c in result.cells]


def markdown(result: Comparison) -> str:
    """The table as Markdown, then each cell's checker detail."""
    cols = ["model", *result.prompts, "passed"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows(result)]
    lines += ["", "| model | prompt | verdict |", "|---|---|---|"]
    lines += [f"| {m} | {p} | {v}: {d.replace('|', '/')} |" for m, p, v, d in verdicts(result)]
    return "\n".join(lines)


def plot(result: Comparison, path: Path | None = None):
    """A pass/fail grid (green/red) annotated with tokens/s and thinking tokens; saved to `path` if given."""
    import matplotlib  # optional (the `notebooks` extra): imported on use
    import matplotlib.pyplot as plt  # optional (the `notebooks` extra): imported on use

    grid = np.array([[1.0 if result.cell(m, p).passed else 0.0 for p in result.prompts] for m in result.models])
    fig, ax = plt.subplots(figsize=(1.6 * len(result.prompts) + 2.5, 0.9 * len(result.models) + 1.5))
    ax.imshow(grid, cmap=matplotlib.colors.ListedColormap(["#f4a6a6", "#9fd89f"]), vmin=0, vmax=1, aspect="auto")
    for i, m in enumerate(result.models):
        for j, p in enumerate(result.prompts):
            c = result.cell(m, p)
            ax.text(j, i, f"{'PASS' if c.passed else 'fail'}\n{c.tokens_per_s:.0f} tok/s\nthink {c.thinking_tokens}",
                    ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(result.prompts)), result.prompts)
    ax.set_yticks(range(len(result.models)), result.models)
    ax.set_title("seeds' prompts, graded (DeepSeek sampling: temp {temp}, top-p {top_p}, min-p {min_p})"
                 .format(**result.sampling), fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def compare_command(models: str = DEFAULT_MODELS, prompts: str = "seeds", max_tokens: int | None = None,
                    threads: int = 0, out: str | None = None) -> int:
    """`invoke compare`: run, grade, print the table; write compare.json, table.md, compare.png."""

    result = compare(models, prompts, flag_number("max_tokens", max_tokens, int, 1),
                     flag_number("threads", threads, int, 0) or 0,
                     Path(out) if out else None)
    print_table("seeds' prompts, graded (PASS/fail · generation tok/s · thinking tokens)",
                ["model", *result.prompts, "passed"], rows(result))
    step(f"answers, table.md, compare.json and compare.png in {result.out_dir}")
    return 0
