"""Run lessons (notebooks/*.ipynb) with papermill: typed parameters, run folders, metrics, clear failures.

A run writes `runs/<timestamp>-<lesson>/`: the executed notebook, its HTML export, `metrics.json` (what
the lesson passed to `record`), `run.json` (status, parameters, duration, failure) and `run.log` (cell
outputs as papermill logs them). Lessons call `record(name, value)` and `output_dir()`; both also
work interactively and under nbval, where no runner is around.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import yaml

from lowbit import LowbitError, ui
from lowbit.lessons.stored import clean_notebook, is_clean, machine_paths
from lowbit.machine import busy_cpu_seconds, own_cpu_seconds
from lowbit.paths import KIT_ROOT, kit_root, runs_dir
from lowbit.toolchain.jupyter_kernel import KERNEL_NAME, register_kernel

RUN_DIR_ENV = "LOWBIT_RUN_DIR"  # set for the kernel by the runner: where `record` and `output_dir` write
_METRICS: dict[str, Any] = {}  # interactive sessions: what `record` was given


# --- helpers the lessons call -----------------------------------------------------------------


def record(name: str, value: Any) -> Any:
    """Record a lesson result; under the runner it lands in the run's `metrics.json`. Returns `value`.

    Values must be JSON-serialisable (numbers, strings, lists, dicts). Interactively (Jupyter, nbval)
    they are kept in memory only (`recorded()`), so no file is written outside a run.
    """
    json.dumps(value)  # fail in the cell that records something unserialisable, not at the end
    _METRICS[name] = value
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir:
        path = Path(run_dir) / "metrics.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = value
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    return value


def recorded() -> dict[str, Any]:
    """What `record` was given in this process."""
    return dict(_METRICS)


def output_dir() -> Path:
    """Where a lesson may write files: the run folder under the runner, else `runs/interactive/`."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    path = Path(run_dir) if run_dir else runs_dir() / "interactive"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- finding lessons and their parameters ---------------------------------------------------


def notebooks_dir() -> Path:
    return kit_root() / "notebooks"


def lessons() -> list[Path]:
    """Every lesson notebook, in teaching order (file name order)."""
    return sorted(p for p in notebooks_dir().glob("*.ipynb") if not p.name.startswith("."))


def lesson_path(name: str) -> Path:
    """A lesson by name (`00_quickstart`, `00_quickstart.ipynb`, `quickstart`, `00`) or by path."""
    found = lessons()
    stem = name[:-6] if name.endswith(".ipynb") else name
    for p in found:
        if p.stem == stem:
            return p
    path = Path(name).expanduser()
    if path.suffix == ".ipynb" and path.is_file():
        return path.resolve()
    matches = [p for p in found if p.stem.split("_", 1)[0] == stem or stem in p.stem.split("_", 1)[-1]]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(p.stem for p in found) or "none"
    what = "is ambiguous" if matches else "is not a lesson"
    raise LowbitError(f"notebook {name!r} {what}; lessons: {names} (`invoke notebooks` lists them)")


@dataclass
class Parameter:
    """One name in a notebook's `parameters` cell."""

    name: str
    default: Any  # the default's value (None when it is not a literal)
    source: str  # the default as written
    type_name: str  # annotation, or the default's type as papermill infers it
    help: str


def notebook_parameters(path: Path) -> dict[str, Parameter]:
    """The parameters a notebook declares, read with `papermill.inspect_notebook`."""
    import papermill  # optional (the `notebooks` extra): imported on use

    params = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            default = None
        params[name] = Parameter(
            name, default, info["default"], info.get("inferred_type_name") or "None", info.get("help") or ""
        )
    return params


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _kind(param: Parameter) -> str:
    if param.default is not None:
        return type(param.default).__name__
    for base in ("bool", "int", "float", "str", "list", "dict"):
        if re.search(rf"\b{base}\b", param.type_name):
            return base
    return "any"


def _nullable(param: Parameter) -> bool:
    return param.source.strip() == "None" or "None" in param.type_name or "Optional" in param.type_name


def coerce(param: Parameter, value: Any) -> Any:
    """`value` (a command-line string, or a value from YAML) as the type of `param`'s default.

    Strings from the command line are parsed by that type, not guessed: `007` stays "007" for a string
    parameter, `true` becomes True only for a boolean one, `24,80` is a list for a list parameter.
    """
    kind = _kind(param)
    expect = f"parameter {param.name!r} expects {kind} (default {param.source})"
    if isinstance(value, str) and _nullable(param) and value.strip().lower() in ("none", "null"):
        return None
    if value is None:
        if _nullable(param):
            return None
        raise LowbitError(f"{expect}; got nothing")
    if isinstance(value, str) and kind != "str":
        return _parse_string(param, kind, value, expect)
    ok = {
        "bool": (bool,),
        "int": (int,),
        "float": (int, float),
        "str": (str,),
        "list": (list, tuple),
        "tuple": (list, tuple),
        "dict": (dict,),
    }.get(kind)
    if ok is None:
        return value
    if not isinstance(value, ok) or (kind in ("int", "float") and isinstance(value, bool)):
        hint = " (quote it in YAML to keep it a string)" if kind == "str" else ""
        raise LowbitError(f"{expect}; got {value!r} ({type(value).__name__}){hint}")
    return float(value) if kind == "float" else list(value) if kind in ("list", "tuple") else value


def _parse_string(param: Parameter, kind: str, text: str, expect: str) -> Any:
    raw = text.strip()
    try:
        if kind == "bool":
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValueError(raw)
        if kind == "int":
            return int(raw, 10)
        if kind == "float":
            return float(raw)
        if kind in ("list", "tuple"):
            if raw.startswith("["):
                return coerce(param, json.loads(raw))
            items = [s.strip() for s in raw.split(",") if s.strip()]
            sample = param.default[0] if param.default else None
            if sample is None:
                return [_literal(s) for s in items]
            element = Parameter(f"{param.name}[]", sample, repr(sample), type(sample).__name__, "")
            return [coerce(element, s) for s in items]
        if kind == "dict":
            return coerce(param, json.loads(raw))
    except (ValueError, json.JSONDecodeError, LowbitError) as exc:
        raise LowbitError(f"{expect}; got {text!r}") from exc
    return _literal(raw)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """`["key=value", ...]` from `-p` flags as a dict of strings (values keep every character)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LowbitError(f"parameter {item!r} is not key=value (example: -p n_predict=16)")
        out[key.strip()] = value
    return out


def load_params_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping of parameter values."""

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LowbitError(f"cannot read parameters file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise LowbitError(f"parameters file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LowbitError(
            f"parameters file {path} must be a mapping of name: value, not {type(data).__name__}"
        )
    return data


def check_parameters(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """`values` typed against the notebook's parameters cell; unknown names: an error listing valid ones."""
    declared = notebook_parameters(path)
    if not declared and values:
        raise LowbitError(
            f"{path.stem} has no `parameters` cell, so it takes no parameters (got "
            f"{', '.join(sorted(values))})"
        )
    unknown = sorted(set(values) - set(declared))
    if unknown:
        valid = ", ".join(f"{p.name} ({_kind(p)}, default {p.source})" for p in declared.values())
        raise LowbitError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {path.stem}; valid parameters: {valid}"
        )
    return {name: coerce(declared[name], value) for name, value in values.items()}


# --- running --------------------------------------------------------------------------------


@dataclass
class CellFailure:
    """Where and why a run stopped."""

    cell_index: int  # index in the executed notebook (the injected-parameters cell counts)
    execution_count: int | None
    line_number: int | None  # 1-based line in the cell
    line: str
    error: str  # "AssertionError: ..."

    def describe(self) -> str:
        where = f"cell {self.cell_index}" + (
            f" (In [{self.execution_count}])" if self.execution_count else ""
        )
        at = f", line {self.line_number}" if self.line_number else ""
        return f"{where}{at}: {self.line.strip()}\n  {self.error}"


@dataclass
class RunResult:
    """What `execute` did; also written as `run.json` in the run folder."""

    notebook: str
    run_dir: str
    status: str  # "ok" | "failed"
    seconds: float
    parameters: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: CellFailure | None = None
    executed: str = ""
    html: str = ""
    log: str = ""
    others_cpus: float | None = None  # CPUs other processes used during the run (busy machine: timings lie)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def new_run_dir(name: str, parent: Path | None = None) -> Path:
    """A fresh `<parent>/<timestamp>-<name>/` (default parent: `runs/`), never an existing folder."""
    parent = parent or runs_dir()
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = parent / (f"{stamp}-{name}" if i == 1 else f"{stamp}-{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise LowbitError(f"cannot create a run folder under {parent}")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _failure_from(nb, exc: Exception) -> CellFailure:
    """Locate the failing cell in the executed notebook and the line the traceback points at."""
    cells = nb.cells
    index = getattr(exc, "cell_index", None)
    if index is None:  # timeouts and dead kernels: the cell papermill marked as still running or failed
        index = next(
            (
                i
                for i, c in enumerate(cells)
                if c.get("metadata", {}).get("papermill", {}).get("status") in ("running", "failed")
            ),
            None,
        )
    cell = cells[index] if index is not None and index < len(cells) else None
    source = (getattr(exc, "source", None) or (cell.source if cell else "")).splitlines()
    tb = _ANSI.sub("", "\n".join(getattr(exc, "traceback", None) or []))
    lines = [int(m) for m in re.findall(r"Cell In\[\d*\], line (\d+)", tb)]
    line_number = lines[-1] if lines and lines[-1] <= len(source) else (len(source) or None)
    line = source[line_number - 1] if line_number else ""
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = getattr(exc, "evalue", None)
    if evalue is None:
        message = str(exc).strip().splitlines()
        evalue = message[-1] if message else ""
    count = getattr(exc, "exec_count", None) or (cell.get("execution_count") if cell else None)
    return CellFailure(index if index is not None else -1, count, line_number, line, f"{ename}: {evalue}")


def _cell_label(cell, limit: int = 48) -> str | None:
    """The first code line of a cell, for the progress bar (papermill shows `Executing <label>`)."""
    for line in (cell.get("source") or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return None


def _register_engine() -> str:
    """papermill's nbclient engine, with each cell's first line as the progress bar's description."""
    from papermill.engines import NBClientEngine, papermill_engines  # optional (the `notebooks` extra): imported on use

    class LowbitEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            nb_man.get_cell_description = lambda cell, escape_str=None: _cell_label(cell)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("lowbit", LowbitEngine)
    return "lowbit"


def export_html(nb, path: Path) -> Path:
    """The notebook as HTML (nbconvert's lab template; saved widget state makes controls show)."""
    from nbconvert import HTMLExporter  # optional (the `notebooks` extra): imported on use

    body, _ = HTMLExporter().from_notebook_node(nb)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)
    return path


def execute(
    notebook: str | Path,
    parameters: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    kernel: str = "lowbit",
    progress: bool = True,
    cell_timeout: int | None = 600,
) -> RunResult:
    """Run one lesson with papermill into a run folder; never raises for a failing cell (see `.failure`)."""

    import nbformat  # optional (the `notebooks` extra): imported on use
    import papermill  # optional (the `notebooks` extra): imported on use
    from papermill.exceptions import PapermillExecutionError  # optional (the `notebooks` extra): imported on use

    path = notebook if isinstance(notebook, Path) else lesson_path(str(notebook))
    params = check_parameters(path, dict(parameters or {}))
    run_dir = run_dir or new_run_dir(path.stem)
    run_dir.mkdir(parents=True, exist_ok=True)
    executed, html, log = run_dir / f"{path.stem}.ipynb", run_dir / f"{path.stem}.html", run_dir / "run.log"

    logger = logging.getLogger("papermill")
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    old_env = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # the kernel inherits it: `record` writes there
    start = time.monotonic()
    cpu0 = _cpu_seconds()
    failure = None
    try:
        papermill.execute_notebook(
            str(path),
            str(executed),
            parameters=params,
            kernel_name=kernel,
            cwd=str(path.parent),
            engine_name=_register_engine(),
            progress_bar={"desc": path.stem, "leave": False} if progress else False,
            log_output=True,
            execution_timeout=cell_timeout,
            request_save_on_cell_execute=True,
        )
    except PapermillExecutionError as exc:
        failure = exc
    except Exception as exc:  # timeouts, a dead kernel: still a failed run with a partial notebook
        if not executed.exists():
            raise
        failure = exc
    finally:
        seconds = time.monotonic() - start
        others = _others_cpus(cpu0, seconds)
        if old_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = old_env
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

    nb = nbformat.read(executed, as_version=4)
    export_html(nb, html)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    result = RunResult(
        notebook=path.stem,
        run_dir=str(run_dir),
        status="failed" if failure else "ok",
        seconds=round(seconds, 2),
        parameters=params,
        metrics=metrics,
        failure=_failure_from(nb, failure) if failure else None,
        executed=str(executed),
        html=str(html),
        log=str(log),
        others_cpus=others,
    )
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(asdict(result), indent=2, default=str) + "\n")
    os.replace(tmp, run_dir / "run.json")
    return result


BUSY_STORE_CPUS = 0.5  # other processes' CPUs during a run above which its result is not stored


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU-seconds every process has run, CPU-seconds of this process and its reaped children), or None."""
    total = busy_cpu_seconds()
    if total is None:
        return None
    return total, own_cpu_seconds()


def _others_cpus(start: tuple[float, float] | None, seconds: float) -> float | None:
    """CPUs' worth of time processes other than this run (and its kernel) used since `start`."""
    end = _cpu_seconds()
    if start is None or end is None or seconds <= 0:
        return None
    return round(max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / seconds, 2)


def store_executed(result: RunResult, allow_busy: bool = False) -> Path:
    """Replace the stored lesson with this run's executed copy — only from a quiet machine (unless
    `allow_busy`), only without absolute paths of this machine in it, atomically."""
    import nbformat  # optional (the `notebooks` extra): imported on use

    if not result.ok:
        raise LowbitError(f"not stored: {result.notebook} failed ({result.failure.describe()})")
    if result.others_cpus is None or result.others_cpus > BUSY_STORE_CPUS:
        if not allow_busy:
            load = "unknown" if result.others_cpus is None else f"{result.others_cpus} CPUs"
            raise LowbitError(
                f"not stored: other processes used {load} during the run (more than {BUSY_STORE_CPUS}), so its "
                "timings describe the load, not the lesson; rerun on a quiet machine, or pass --allow-busy"
            )
    dest = lesson_path(result.notebook)
    nb = clean_notebook(nbformat.read(result.executed, as_version=4))  # no timestamps, durations, versions
    pm = nb.metadata.get("papermill")
    if isinstance(pm, dict):
        pm["input_path"] = pm["output_path"] = dest.name
    text = nbformat.writes(nb)
    shown = [*machine_paths(nb), *(secret for secret in {str(KIT_ROOT), str(Path.home()), tempfile.gettempdir(),
                                                         str(Path(result.run_dir).resolve())}
                                   if secret and secret != "/" and secret in text)]
    if shown:
        raise LowbitError(f"not stored: the executed notebook shows the absolute path {shown[0]!r}; print paths "
                          "relative to the model or run folder in the lesson")
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")  # as nbformat.write ends a file
    os.replace(tmp, dest)
    return dest


def clean_lessons(names: list[str] | None = None, check: bool = False) -> int:
    """Clean the stored lessons `names` (default: all) of run-to-run metadata in place; `check` only lists the
    unclean ones (exit 1 if any). `invoke run-notebook --store` stores lessons clean; this is for copies stored
    another way."""
    unclean = []
    for path in [lesson_path(n) for n in names] if names else lessons():
        nb = nbformat.read(path, as_version=4)
        if is_clean(nb):
            continue
        unclean.append(path.name)
        if not check:
            tmp = path.with_name(f".{path.name}.tmp")
            nbformat.write(clean_notebook(nb), tmp)
            os.replace(tmp, path)
    verb = "not clean" if check else "cleaned"
    print(f"{verb}: {', '.join(unclean)}" if unclean else "every stored lesson is clean")
    return 1 if check and unclean else 0


def run_notebook(
    name: str = "00_quickstart",
    param: list[str] | None = None,
    params_file: str | None = None,
    kernel: str = "lowbit",
    store: bool = False,
    allow_busy: bool = False,
) -> int:
    """`invoke run-notebook`: run one lesson, print where its outputs are; exit 1 when a cell fails. `store`
    replaces the lesson's stored executed copy (refused when the machine was busy, unless `allow_busy`)."""

    path = lesson_path(name)
    values = load_params_file(params_file) if params_file else {}
    values.update(parse_assignments(param))
    params = check_parameters(path, values)  # before anything runs or any folder is made
    if kernel == KERNEL_NAME:
        register_kernel()
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
    ui.step(f"running {path.stem} ({shown})")
    result = execute(path, params, kernel=kernel)
    if result.metrics:
        ui.print_table(
            f"{path.stem}: recorded metrics",
            ["metric", "value"],
            [(k, _short(v)) for k, v in result.metrics.items()],
        )
    if result.failure:
        ui.err_console.print(
            f"[bold red]error:[/] {path.stem} failed after {result.seconds:.1f} s at "
            f"{result.failure.describe()}",
            markup=True,
            highlight=False,
        )
        ui.err_console.print(
            f"partial output: {result.executed}\n              {result.html}\nlog: {result.log}"
        )
        return 1
    print(f"{path.stem} ok in {result.seconds:.1f} s (other processes used {result.others_cpus} CPUs meanwhile)")
    if store:
        print(f"  stored:   {store_executed(result, allow_busy)}")
    print(
        f"  notebook: {result.executed}\n  html:     {result.html}\n  metrics:  {result.run_dir}/metrics.json"
    )
    return 0


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lesson_purpose(path: Path) -> str:
    """The lesson's one-line purpose: its title (first markdown heading), without the number prefix."""
    import nbformat  # optional (the `notebooks` extra): imported on use

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.strip():
            first = cell.source.strip().splitlines()[0].lstrip("#").strip()
            return re.sub(r"^\d+\s*[·:.-]\s*", "", first)
    return ""


def list_lessons() -> int:
    """`invoke notebooks`: each lesson with its purpose and parameters (name=default)."""

    rows = []
    for path in lessons():
        params = notebook_parameters(path)
        rows.append(
            (path.stem, lesson_purpose(path), " ".join(f"{p.name}={p.source}" for p in params.values()))
        )
    if not rows:
        print(f"no lessons under {notebooks_dir()}", file=sys.stderr)
        return 1
    ui.print_table(
        "lessons (invoke run-notebook --name NAME -p key=value)", ["lesson", "purpose", "parameters"], rows
    )
    return 0
