"""`invoke run-notebook --store`: a stored lesson comes from a quiet, successful run without machine paths."""

from __future__ import annotations

import tempfile

import nbformat
import pytest

from lowbit import LowbitError
from lowbit.lessons import runner as N
from lowbit.lessons.stored import is_clean, machine_paths


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


def _run_metadata(nb) -> None:
    """What papermill and nbclient write into a notebook on every run (timestamps, versions, a random ID)."""
    nb.metadata["papermill"].update(start_time="2026-12-05T00:00:00", end_time="2026-12-05T00:01:00",
                                    duration=60.0, exception=None, version="2.7.0", parameters={"n": 2})
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7", "pygments_lexer": "ipython3"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    injected = nbformat.v4.new_code_cell("n = 2")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(0, injected)
    for cell in nb.cells:
        cell.metadata["papermill"] = {"start_time": "2026-12-05T00:00:01", "duration": 0.5, "status": "completed"}
        cell.metadata["execution"] = {"iopub.status.busy": "2026-12-05T00:00:01.5Z"}


def test_store_drops_run_metadata_and_keeps_the_lesson(tmp_path, dest):
    result = _result(tmp_path, 0.0)
    nb = nbformat.read(result.executed, as_version=4)
    _run_metadata(nb)
    nb.cells[1].metadata["tags"] = ["nbval-ignore-output"]
    nbformat.write(nb, result.executed)
    N.store_executed(result)
    stored = nbformat.read(dest, as_version=4)
    assert is_clean(stored)
    assert stored.metadata["papermill"] == {"input_path": "x.ipynb", "output_path": "x.ipynb", "parameters": {"n": 2}}
    assert stored.metadata["language_info"] == {"name": "python", "pygments_lexer": "ipython3"}
    assert "widgets" in stored.metadata and stored.cells[0].id == "injected-parameters"
    assert all(set(c.metadata) <= {"tags"} for c in stored.cells)
    assert stored.cells[1].metadata["tags"] == ["nbval-ignore-output"]
    assert stored.cells[1].outputs[0]["text"] == "ok" and stored.cells[1].execution_count == 1
    (tmp_path / "again").mkdir()
    again = _result(tmp_path / "again", 0.0)
    for cell in nb.cells:  # the same lesson run again: other times, another random ID for the injected cell
        cell.metadata["papermill"]["duration"] = 9.9
    nb.cells[0].id = "a1b2c3"
    nb.metadata["papermill"]["start_time"] = "2026-12-06T10:00:00"
    nb.metadata["language_info"]["version"] = "3.12.1"
    nbformat.write(nb, again.executed)
    N.store_executed(again)
    assert nbformat.read(dest, as_version=4) == stored  # nothing volatile: a re-store without changes is no diff


def test_store_refuses_temporary_and_other_absolute_paths(tmp_path, dest):
    for i, shown in enumerate([f"{tempfile.gettempdir()}/lowbit-03-abc/models/r1.gguf", "/data/models/r1.gguf",
                               "C:\\Users\\me\\models\\r1.gguf"]):
        (tmp_path / str(i)).mkdir()
        with pytest.raises(LowbitError, match="absolute path"):
            N.store_executed(_result(tmp_path / str(i), 0.0, text=f"fetched -> {shown}\n"))
    assert dest.read_text() == "old"
    fine = "see http://127.0.0.1:8080/v1/models, runs/2026/x.ipynb, 12.5 tok/s, 3/4/5, </span></pre>"
    (tmp_path / "fine").mkdir()
    N.store_executed(_result(tmp_path / "fine", 0.0, text=fine))
    assert fine in dest.read_text()


def test_clean_lessons_cleans_in_place_and_check_reports(tmp_path, monkeypatch, capsys):
    path = tmp_path / "x.ipynb"
    nb = nbformat.read(_result(tmp_path, 0.0).executed, as_version=4)
    _run_metadata(nb)
    nbformat.write(nb, path)
    monkeypatch.setattr(N, "lessons", lambda: [path])
    assert N.clean_lessons(check=True) == 1 and "not clean: x.ipynb" in capsys.readouterr().out
    assert not is_clean(nbformat.read(path, as_version=4))
    assert N.clean_lessons() == 0 and is_clean(nbformat.read(path, as_version=4))
    assert N.clean_lessons(check=True) == 0


@pytest.mark.parametrize("name", [p.stem for p in N.lessons()])
def test_stored_lesson_is_clean_and_shows_no_machine_path(name):
    nb = nbformat.read(N.lesson_path(name), as_version=4)
    assert is_clean(nb), (
        f"{name} carries run metadata (papermill times, versions): store it with `invoke run-notebook --store`, "
        "or clean it with `python -m lowbit lowbit.lessons.runner:clean_lessons`"
    )
    assert not machine_paths(nb), f"{name} shows absolute paths of the machine that ran it: {machine_paths(nb)}"
