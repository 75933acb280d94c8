"""The notebook machinery (runner, pipelines, widgets, kernel, lab) and every lesson through papermill.

Lessons run with the CI parameters of `pipelines/workshop.yaml` (the replicas). Set LOWBIT_TEST_MODEL to
a GGUF path to run them on another model.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lowbit import LowbitError
from lowbit.lessons.runner import (
    check_parameters,
    execute,
    lesson_path,
    lessons,
    notebook_parameters,
    run_notebook,
)
from lowbit.paths import kit_root, models_dir

ROOT = kit_root()
PY = sys.executable
KIT_ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def write_notebook(path: Path, params: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "lowbit", "display_name": "Python (lowbit)", "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# 99 · {path.stem} test lesson"),
        p,
        *(nbformat.v4.new_code_cell(c) for c in cells),
    ]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def toy(tmp_path):
    return write_notebook(
        tmp_path / "toy.ipynb",
        'name = "r1"  # a string\nn = 3\nratio = 0.5\nflag = False\nvram = [24, 80]\nmaybe = None',
        "from lowbit.lessons.runner import record\nrecord('n_squared', n * n)\n"
        "print('flag is', flag, type(flag).__name__)",
        "x = n + 1\nassert n < 5, f'n={n} is too big'",
    )


# --- parameters -----------------------------------------------------------------------------


def test_parameters_are_typed_by_the_notebook_not_guessed(toy):
    typed = check_parameters(
        toy, {"name": "007", "n": "4", "ratio": "3e5", "flag": "true", "vram": "24,80,160", "maybe": "none"}
    )
    assert typed == {
        "name": "007",
        "n": 4,
        "ratio": 300000.0,
        "flag": True,
        "vram": [24, 80, 160],
        "maybe": None,
    }
    assert check_parameters(toy, {"flag": False, "ratio": 2, "vram": [8]}) == {
        "flag": False,
        "ratio": 2.0,
        "vram": [8],
    }
    with pytest.raises(LowbitError, match="'n' expects int"):
        check_parameters(toy, {"n": "three"})
    with pytest.raises(LowbitError, match="'flag' expects bool"):
        check_parameters(toy, {"flag": "maybe"})
    with pytest.raises(LowbitError, match="quote it"):
        check_parameters(toy, {"name": 7})  # YAML `name: 007` arrives as an int


def test_unknown_parameter_names_it_and_lists_the_valid_ones(toy):
    with pytest.raises(LowbitError) as err:
        check_parameters(toy, {"nosuch": "1", "n": "2"})
    message = str(err.value)
    assert "'nosuch'" in message
    for name in notebook_parameters(toy):
        assert name in message


def test_cli_unknown_parameter_fails_before_running(tmp_path):
    env = {**KIT_ENV, "LOWBIT_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run(
        [
            PY,
            "-m",
            "lowbit",
            "lowbit.lessons.runner:run_notebook",
            json.dumps({"name": "00_quickstart", "param": ["nosuch=1"]}),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "'nosuch'" in proc.stderr and "n_predict" in proc.stderr and "model" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_task_declares_repeatable_p_flag():
    out = subprocess.run(
        [PY, "-m", "invoke", "--help", "run-notebook"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "-p, --param" in out.stdout and "--params-file" in out.stdout and "--name" in out.stdout


# --- running --------------------------------------------------------------------------------


def test_run_writes_notebook_html_metrics_log(toy, runs):
    result = execute(toy, {"n": "4", "flag": "yes"}, progress=False)
    assert result.ok, result.failure
    folder = Path(result.run_dir)
    assert folder.parent == runs and folder.name.endswith("-toy")
    assert json.loads((folder / "metrics.json").read_text()) == {"n_squared": 16}
    assert json.loads((folder / "run.json").read_text())["parameters"] == {"n": 4, "flag": True}
    executed = nbformat.read(folder / "toy.ipynb", as_version=4)
    assert "flag is True bool" in json.dumps(executed.cells[3].outputs)
    assert "flag is True bool" in (folder / "toy.html").read_text()
    assert "Executing Cell" in (folder / "run.log").read_text()


def test_failure_names_cell_line_error_and_partial_output(toy, runs, capsys):
    code = run_notebook(str(toy), param=["n=7"], kernel="lowbit")
    err = capsys.readouterr().err
    assert code == 1
    assert "line 2" in err and "assert n < 5" in err and "AssertionError: n=7 is too big" in err
    partial = next(runs.glob("*-toy")) / "toy.ipynb"
    assert str(partial) in err.replace("\n", "") and partial.exists()
    run = json.loads((partial.parent / "run.json").read_text())
    assert run["status"] == "failed" and run["failure"]["line_number"] == 2


def test_record_is_in_memory_without_a_runner(monkeypatch):
    from lowbit.lessons import runner as notebooks

    monkeypatch.delenv(notebooks.RUN_DIR_ENV, raising=False)
    assert notebooks.record("answer", 42) == 42 and notebooks.recorded()["answer"] == 42
    with pytest.raises(TypeError):
        notebooks.record("bad", object())


def test_lessons_listed_with_purpose_and_parameters(capsys):
    from lowbit.lessons.runner import list_lessons

    assert list_lessons() == 0
    out = capsys.readouterr().out
    for path in lessons():
        assert path.stem in out
    assert "n_predict=32" in out and "Quickstart" in out
    assert lesson_path("quickstart") == lesson_path("00") == ROOT / "notebooks" / "00_quickstart.ipynb"
    with pytest.raises(LowbitError, match="00_quickstart"):
        lesson_path("no_such_lesson")


# --- pipelines ------------------------------------------------------------------------------


def test_pipeline_validation_before_anything_runs(toy, tmp_path, runs):
    from lowbit.lessons.pipelines import load_pipeline, run_pipeline

    bad = tmp_path / "bad.yaml"
    cases = {
        "steps: [notebook: x": "not valid YAML",
        "steps:\n  - notebook: no_such_lesson\n": "not a lesson",
        f"steps:\n  - notebook: {toy}\n    parameters: {{nosuch: 1}}\n": "'nosuch'",
        f"steps:\n  - notebook: {toy}\n    parameters: {{n: many}}\n": "'n' expects int",
        f"parameters: {{typo: 1}}\nsteps:\n  - notebook: {toy}\n": "declared by no step",
        f"steps:\n  - notebook: {toy}\n    paramters: {{n: 1}}\n": "unknown key",
    }
    for text, error in cases.items():
        bad.write_text(text)
        with pytest.raises(LowbitError, match=error):
            run_pipeline(str(bad))
    bad.write_text(f"steps:\n  - notebook: {toy}\n")
    with pytest.raises(LowbitError, match="nosuch"):
        run_pipeline(str(bad), param=["nosuch=1"])  # a command-line override must reach a lesson
    assert not runs.exists()
    bad.write_text(
        f"parameters: {{n: 2}}\nsteps:\n  - notebook: {toy}\n  - notebook: 42_absent\n    if_present: true\n"
    )
    steps = load_pipeline(str(bad)).steps
    assert steps[0].parameters == {"n": 2} and steps[1].status == "skipped"
    for name in ("workshop", "r1-iq1s"):
        assert load_pipeline(name).steps[0].path == lesson_path("00_quickstart")


def test_pipeline_runs_steps_stops_at_failure_and_writes_index(toy, tmp_path, runs):
    from lowbit.lessons.pipelines import run_pipeline

    spec = tmp_path / "demo.yaml"
    spec.write_text(
        f"stop_on_failure: true\nparameters: {{flag: true}}\nsteps:\n"
        f"  - notebook: {toy}\n    parameters: {{n: 2}}\n"
        f"  - notebook: {toy}\n    parameters: {{n: 9}}\n"
        f"  - notebook: {toy}\n"
    )
    assert run_pipeline(str(spec)) == 1
    out = next(runs.glob("*-pipeline-demo"))
    steps = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in steps] == ["ok", "failed", "not run"]
    assert steps[0]["metrics"] == {"n_squared": 4} and steps[0]["parameters"] == {"flag": True, "n": 2}
    index = (out / "index.html").read_text()
    assert 'href="01-toy/toy.html"' in index and 'href="02-toy/toy.ipynb"' in index
    assert "n_squared" in index and "AssertionError" in index and "not run" in index


# --- lessons --------------------------------------------------------------------------------


LESSONS = [p.stem for p in lessons()]


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _python(source: str) -> ast.Module:
    return ast.parse(
        "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    )


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_follows_conventions(name):
    path = lesson_path(name)
    nb = nbformat.read(path, as_version=4)
    code = _code_cells(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "lowbit", "kernelspec must be `lowbit`"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    declared = notebook_parameters(path)
    assigned = {
        t.id
        for s in _python(params[0].source).body
        if isinstance(s, ast.Assign)
        for t in s.targets
        if isinstance(t, ast.Name)
    }
    assert assigned == set(declared), f"papermill cannot parse some parameters: {assigned - set(declared)}"
    imports_lowbit = False
    for cell in code:
        tree = _python(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                )
                imports_lowbit |= any(n == "lowbit" or n.startswith("lowbit.") for n in names)
            assert not isinstance(node, ast.ClassDef), "classes belong in lowbit/, not in a lesson"
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 8, (
                    f"function {node.name} is long: move it into lowbit/"
                )
        assert len(cell.source.splitlines()) <= 15, (
            f"a cell of {len(cell.source.splitlines())} lines: cells stay small (<= 15); logic lives in lowbit/"
        )
    assert imports_lowbit, "a lesson calls lowbit"
    last = code[-1]
    assert any(isinstance(n, ast.Assert) for n in ast.walk(_python(last.source))), (
        "final cell asserts the claim"
    )
    assert last.execution_count is not None and last.outputs, (
        "final check cell stored executed (nbval compares it)"
    )
    before = nb.cells[: nb.cells.index(last)]
    assert any(c.cell_type == "markdown" and c.source.strip() for c in before[-2:]), "claim stated in prose"
    assert path.stat().st_size < 200_000, "stored notebook stays small and reviewable"


def _snapshot(skip: set[Path]) -> dict[str, tuple[int, int]]:
    ignored = {
        ".git",
        "runs",
        ".venv",
        ".lowbit",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        ".ipynb_checkpoints",
        "build",
    }
    found = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in ignored and Path(dirpath, d).resolve() not in skip]
        for f in filenames:
            st = Path(dirpath, f).stat()
            found[str(Path(dirpath, f))] = (st.st_mtime_ns, st.st_size)
    return found


def ci_parameters(name: str) -> dict:
    from lowbit.lessons.pipelines import load_pipeline

    override = {"model": os.environ["LOWBIT_TEST_MODEL"]} if os.environ.get("LOWBIT_TEST_MODEL") else None
    for step in load_pipeline("workshop", override).steps:
        if step.path and step.path.stem == name:
            return step.parameters
    raise AssertionError(f"{name} is not in pipelines/workshop.yaml: add it (its CI parameters)")


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSONS)
def test_lesson_runs_through_papermill_with_ci_parameters(name, runs):
    params = ci_parameters(name)
    skip = {models_dir().resolve()} | {
        Path(v).resolve() for k, v in params.items() if k.endswith("_dir") and v
    }
    before = _snapshot(skip)
    result = execute(name, params, progress=False)
    assert result.ok, (
        f"{name} failed: {result.failure.describe() if result.failure else ''} (see {result.run_dir})"
    )
    assert Path(result.html).stat().st_size > 0 and Path(result.executed).exists()
    nb = nbformat.read(result.executed, as_version=4)
    if "ipywidgets" in json.dumps([c.source for c in nb.cells]) or "lowbit.lessons.widgets" in json.dumps(
        [c.source for c in nb.cells]
    ):
        assert "widgets" in nb.metadata, "widget state saved so the HTML shows the controls"
        assert "application/vnd.jupyter.widget-state+json" in Path(result.html).read_text()
    changed = {p for p, v in _snapshot(skip).items() if before.get(p) != v}
    assert not changed, f"{name} wrote outside runs/ or its output dir: {sorted(changed)}"


# --- widgets, kernel, lab -------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm():
    from lowbit.models.catalog import locate
    from lowbit.run.generation import load_model

    model = os.environ.get("LOWBIT_TEST_MODEL") or "r1"
    return load_model(locate(model, obtain=True), threads=2, n_ctx=512)


@pytest.mark.slow
def test_chat_widget_button_streams_with_slider_values(llm):
    from lowbit.lessons.widgets import ChatWidget
    from lowbit.run.generation import generate

    chat = ChatWidget(llm, "Hello", n_predict=4)
    chat.prompt.value, chat.length.value, chat.temperature.value, chat.min_p.value = (
        "Name a colour.",
        6,
        0.0,
        0.0,
    )
    streamed = []
    chat.output.observe(lambda change: streamed.append(change["new"]), names="value")
    chat.button.click()  # what a browser's click does: the registered callback runs
    assert chat.last is not None and (chat.last.n_generated == 6 or chat.last.stop_reason == "eos")
    assert chat.output.value == chat.last.text and len(streamed) >= 2  # cleared, then grew piece by piece
    assert not chat.button.disabled and "tok/s" in chat.status.value
    direct = generate(llm, "Name a colour.", n_predict=6, temperature=0.0, min_p=0.0, seed=chat.seed)
    assert direct.tokens == chat.last.tokens  # the button runs the same action the headless path runs


def test_kernel_registration_is_idempotent():
    from lowbit.toolchain.jupyter_kernel import kernel_dir, kernel_registered, register_kernel

    assert register_kernel() == 0 and kernel_registered()
    spec = kernel_dir() / "kernel.json"
    stamp = spec.stat().st_mtime_ns
    assert register_kernel() == 0 and spec.stat().st_mtime_ns == stamp  # already there: nothing rewritten


def test_lab_serves_status_with_token_and_stops():
    import urllib.error
    import urllib.request

    from lowbit.lessons.lab import LabServer

    server = LabServer().start()
    try:
        assert server.info["url"].startswith("http://127.0.0.1:")
        assert "started" in server.status()
        assert f"token={server.info['token']}" in server.url
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(server.info["url"].rstrip("/") + "/api/status", timeout=10)
        assert denied.value.code == 403
    finally:
        server.stop()
    assert server.proc.poll() is not None


def test_invoke_test_runs_every_notebook_under_nbval_lax():
    from lowbit.testing import nbval_args

    args = nbval_args(ROOT)
    assert "--nbval-lax" in args and "notebooks/nbval-sanitize.cfg" in args
    assert {a for a in args if a.endswith(".ipynb")} == {f"notebooks/{n}.ipynb" for n in LESSONS}


def test_linked_controls_run_once_now_and_again_on_change(capsys):
    import ipywidgets as w

    from lowbit.lessons.widgets import linked

    calls = []
    size = w.IntSlider(value=3, min=1, max=10)
    assert linked(lambda size: calls.append(size) or size * 2, size=size) == 6  # the headless run
    size.value = 5  # what moving the slider in a browser does
    assert calls == [3, 5]
    clicked = []
    assert linked(lambda n: clicked.append(n) or n, button="Run", n=w.IntText(value=1)) == 1
    assert clicked == [1]


def test_params_file_then_p_overrides(toy, tmp_path, runs):
    params = tmp_path / "params.yaml"
    params.write_text('name: "007"\nn: 1\nvram: [8, 16]\n')
    assert run_notebook(str(toy), param=["n=2"], params_file=str(params)) == 0
    run = json.loads(next(runs.glob("*-toy/run.json")).read_text())
    assert run["parameters"] == {"name": "007", "n": 2, "vram": [8, 16]}
    params.write_text("- not a mapping\n")
    with pytest.raises(LowbitError, match="must be a mapping"):
        run_notebook(str(toy), params_file=str(params))
