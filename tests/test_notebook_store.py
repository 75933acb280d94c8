"""`invoke run-notebook --store`: a stored lesson comes from a quiet, successful run without machine paths."""

from __future__ import annotations

import nbformat
import pytest

from lowbit import LowbitError
from lowbit.lessons import runner as N


def _result(tmp_path, others: float | None, text: str = "ok", status: str = "ok") -> N.RunResult:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("print('ok')", outputs=[nbformat.v4.new_output(
        "stream", name="stdout", text=text)], execution_count=1))
    nb.metadata["papermill"] = {"input_path": "/somewhere/else/x.ipynb", "output_path": str(tmp_path / "x.ipynb")}
    executed = tmp_path / "run" / "x.ipynb"
    executed.parent.mkdir()
    nbformat.write(nb, executed)
    return N.RunResult(notebook="x", run_dir=str(executed.parent), status=status, seconds=1.0, parameters={},
                       executed=str(executed), others_cpus=others)


@pytest.fixture()
def dest(tmp_path, monkeypatch):
    target = tmp_path / "lessons" / "x.ipynb"
    target.parent.mkdir()
    target.write_text("old")
    monkeypatch.setattr(N, "lesson_path", lambda name: target)
    return target


def test_quiet_run_is_stored_with_relative_papermill_paths(tmp_path, dest):
    N.store_executed(_result(tmp_path, 0.1))
    nb = nbformat.read(dest, as_version=4)
    assert nb.metadata["papermill"]["input_path"] == "x.ipynb" == nb.metadata["papermill"]["output_path"]
    assert nb.cells[0].outputs[0]["text"] == "ok"


def test_busy_run_is_refused_unless_allowed(tmp_path, dest):
    with pytest.raises(LowbitError, match="other processes used 1.7 CPUs.*--allow-busy"):
        N.store_executed(_result(tmp_path, 1.7))
    assert dest.read_text() == "old"
    (tmp_path / "b").mkdir()
    N.store_executed(_result(tmp_path / "b", 1.7), allow_busy=True)
    assert dest.read_text() != "old"


def test_unknown_load_failed_run_and_machine_paths_are_refused(tmp_path, dest):
    with pytest.raises(LowbitError, match="unknown"):
        N.store_executed(_result(tmp_path, None))
    (tmp_path / "c").mkdir()
    failed = _result(tmp_path / "c", 0.0, status="failed")
    failed.failure = N.CellFailure(cell_index=0, execution_count=1, line_number=1, line="assert x",
                                   error="AssertionError: no")
    with pytest.raises(LowbitError, match="failed"):
        N.store_executed(failed)
    (tmp_path / "d").mkdir()
    from lowbit.paths import KIT_ROOT

    with pytest.raises(LowbitError, match="absolute path"):
        N.store_executed(_result(tmp_path / "d", 0.0, text=f"model at {KIT_ROOT}/models/x.gguf"))
    assert dest.read_text() == "old"


def test_run_measures_other_processes_load():
    start = N._cpu_seconds()
    assert start is not None
    assert N._others_cpus(start, 0.5) >= 0.0
