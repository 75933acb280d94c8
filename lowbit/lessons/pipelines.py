"""Pipelines (`pipelines/NAME.yaml`): lessons run in order with shared parameters, and an HTML index.

```yaml
description: what this pipeline is for
stop_on_failure: true          # default true: later steps are "not run" after a failure
parameters: {model: r1}        # shared: given to every step whose notebook declares the name
steps:
  - notebook: 00_quickstart
    parameters: {n_predict: 16} # this step only; must be declared by the notebook
  - notebook: 05_bitnet_cpu
    if_present: true            # skipped with a note when the lesson is not in notebooks/
```

Everything is validated before the first step runs: bad YAML, unknown keys, an unknown notebook,
a parameter a notebook does not declare, or a value of the wrong type is an error.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowbit import LowbitError, ui
from lowbit.lessons.runner import (
    check_parameters,
    execute,
    lesson_path,
    new_run_dir,
    notebook_parameters,
    parse_assignments,
)
from lowbit.paths import kit_root
from lowbit.toolchain.jupyter_kernel import KERNEL_NAME, register_kernel

TOP_KEYS = {"description", "stop_on_failure", "parameters", "steps"}
STEP_KEYS = {"notebook", "parameters", "if_present"}


def pipelines_dir() -> Path:
    return kit_root() / "pipelines"


def pipeline_file(name: str) -> Path:
    """`pipelines/NAME.yaml`, or a path to a YAML file."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    candidate = pipelines_dir() / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in pipelines_dir().glob("*.yaml"))) or "none"
    raise LowbitError(f"no pipeline {name!r}; pipelines: {known} (files in {pipelines_dir()})")


@dataclass
class Step:
    index: int
    notebook: str  # as written in the YAML
    path: Path | None  # None: absent and `if_present`
    parameters: dict[str, Any] = field(default_factory=dict)  # typed, shared ones merged in
    status: str = "pending"  # ok | failed | skipped | not run
    note: str = ""
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None


@dataclass
class Pipeline:
    name: str
    file: Path
    description: str
    stop_on_failure: bool
    shared: dict[str, Any]
    steps: list[Step]


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LowbitError(f"{where} must be a mapping (name: value), not {type(value).__name__}")
    return value


def load_pipeline(name: str, overrides: dict[str, Any] | None = None) -> Pipeline:
    """Parse and validate a pipeline completely; `overrides` replace shared parameters."""

    file = pipeline_file(name)
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise LowbitError(f"{file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LowbitError(
            f"{file} must be a mapping with `steps:` (and optionally description, parameters, "
            "stop_on_failure)"
        )
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise LowbitError(
            f"{file}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}"
        )
    shared = {**_mapping(data.get("parameters"), f"{file}: parameters"), **(overrides or {})}
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or not steps_data:
        raise LowbitError(
            f"{file}: `steps` must be a non-empty list of {{notebook: NAME, parameters: {{...}}}}"
        )
    stop = data.get("stop_on_failure", True)
    if not isinstance(stop, bool):
        raise LowbitError(f"{file}: stop_on_failure must be true or false, not {stop!r}")

    steps, used = [], set()
    for i, raw in enumerate(steps_data, 1):
        where = f"{file}: step {i}"
        if isinstance(raw, str):
            raw = {"notebook": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("notebook"), str):
            raise LowbitError(f"{where} needs `notebook: NAME`")
        bad = sorted(set(raw) - STEP_KEYS)
        if bad:
            raise LowbitError(
                f"{where} ({raw['notebook']}): unknown key(s) {', '.join(bad)}; allowed: "
                f"{', '.join(sorted(STEP_KEYS))}"
            )
        own = _mapping(raw.get("parameters"), f"{where} parameters")
        try:
            path = lesson_path(raw["notebook"])
        except LowbitError as exc:
            if raw.get("if_present"):
                steps.append(
                    Step(
                        i,
                        raw["notebook"],
                        None,
                        status="skipped",
                        note="lesson not present in notebooks/ (if_present)",
                    )
                )
                continue
            raise LowbitError(f"{where}: {exc}") from exc
        declared = notebook_parameters(path)
        mine = {k: v for k, v in shared.items() if k in declared}
        used.update(mine)
        try:
            typed = check_parameters(path, {**mine, **own})
        except LowbitError as exc:
            raise LowbitError(f"{where}: {exc}") from exc
        steps.append(Step(i, raw["notebook"], path, typed))
    unused = sorted(set(shared) - used)
    stray = sorted(set(overrides or {}) - used)
    if stray:  # a command-line override must reach a lesson that is here
        raise LowbitError(f"parameter(s) {', '.join(stray)} given on the command line are declared by no "
                          f"lesson present in {file.stem}")
    if unused and all(s.path for s in steps):
        raise LowbitError(
            f"{file}: shared parameter(s) {', '.join(unused)} are declared by no step's notebook"
        )
    return Pipeline(file.stem, file, str(data.get("description") or ""), stop, shared, steps)


def run_pipeline(name: str, param: list[str] | None = None, kernel: str = "lowbit") -> int:
    """`invoke run-pipeline NAME`: run the steps, write `runs/<time>-pipeline-NAME/index.html`."""

    pipeline = load_pipeline(name, parse_assignments(param))  # everything validated before anything runs
    if kernel == KERNEL_NAME:
        register_kernel()
    out = new_run_dir(f"pipeline-{pipeline.name}")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    for step in pipeline.steps:
        if step.status == "skipped":
            ui.warn(f"step {step.index} {step.notebook}: skipped ({step.note})")
            continue
        if step.status == "not run":
            continue
        ui.step(f"step {step.index}/{len(pipeline.steps)}: {step.path.stem}")
        step.run_dir = out / f"{step.index:02d}-{step.path.stem}"
        result = execute(step.path, step.parameters, run_dir=step.run_dir, kernel=kernel)
        step.status, step.seconds, step.metrics = result.status, result.seconds, result.metrics
        if result.failure:
            step.note = result.failure.describe()
            ui.err_console.print(f"[bold red]step {step.index} failed[/] at {step.note}", highlight=False)
            if pipeline.stop_on_failure:
                for later in pipeline.steps[step.index :]:
                    if later.status == "pending":
                        later.status, later.note = "not run", f"stopped after step {step.index} failed"
        write_index(pipeline, out, started)
    index = write_index(pipeline, out, started)
    ui.print_table(
        f"pipeline {pipeline.name}",
        ["#", "step", "status", "seconds", "note"],
        [
            (
                s.index,
                s.notebook,
                s.status,
                "" if s.seconds is None else f"{s.seconds:.1f}",
                s.note.splitlines()[0] if s.note else "",
            )
            for s in pipeline.steps
        ],
    )
    print(f"index: {index}")
    return 1 if any(s.status == "failed" for s in pipeline.steps) else 0


def _metrics_html(metrics: dict[str, Any], limit: int = 6) -> str:
    items = []
    for key, value in list(metrics.items())[:limit]:
        text = value if isinstance(value, str) else json.dumps(value)
        text = text if len(text) <= 60 else text[:59] + "…"
        items.append(f"<code>{html.escape(key)}</code>={html.escape(text)}")
    more = f" (+{len(metrics) - limit} in metrics.json)" if len(metrics) > limit else ""
    return "<br>".join(items) + more


def write_index(pipeline: Pipeline, out: Path, started: str) -> Path:
    """`index.html`: steps, status, duration, key metrics, links to each executed notebook and its HTML."""
    rows = []
    for s in pipeline.steps:
        links = ""
        if s.run_dir and s.path:
            rel = s.run_dir.relative_to(out).as_posix()
            links = " · ".join(
                f'<a href="{rel}/{f}">{label}</a>'
                for label, f in (
                    ("html", f"{s.path.stem}.html"),
                    ("notebook", f"{s.path.stem}.ipynb"),
                    ("metrics", "metrics.json"),
                    ("log", "run.log"),
                )
                if (s.run_dir / f).exists()
            )
        seconds = "" if s.seconds is None else f"{s.seconds:.1f} s"
        note = html.escape(s.note).replace("\n", "<br>")
        rows.append(
            f'<tr class="{s.status.replace(" ", "-")}"><td>{s.index}</td><td>{html.escape(s.notebook)}</td>'
            f"<td>{s.status}</td><td>{seconds}</td><td>{_metrics_html(s.metrics)}</td><td>{links}</td>"
            f"<td>{note}</td></tr>"
        )
    total = sum(s.seconds or 0 for s in pipeline.steps)
    shared = ", ".join(f"{k}={v!r}" for k, v in pipeline.shared.items()) or "none"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pipeline {html.escape(pipeline.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}} .ok td:nth-child(3){{color:#080}}
.failed td:nth-child(3){{color:#c00;font-weight:bold}} .skipped,.not-run{{color:#888}}</style></head>
<body><h1>pipeline {html.escape(pipeline.name)}</h1>
<p>{html.escape(pipeline.description)}</p>
<p>started {started} · {total:.1f} s in lessons · shared parameters: {html.escape(shared)} ·
stop on failure: {pipeline.stop_on_failure}</p>
<table><tr><th>#</th><th>step</th><th>status</th><th>duration</th><th>key metrics</th><th>links</th>
<th>note</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    index = out / "index.html"
    tmp = out / "index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    (out / "pipeline.json").write_text(
        json.dumps(
            [
                {
                    "step": s.index,
                    "notebook": s.notebook,
                    "status": s.status,
                    "seconds": s.seconds,
                    "note": s.note,
                    "metrics": s.metrics,
                    "parameters": s.parameters,
                }
                for s in pipeline.steps
            ],
            indent=2,
            default=str,
        )
        + "\n"
    )
    return index
