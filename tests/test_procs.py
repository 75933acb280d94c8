"""The one child-process lifecycle (`lowbit.procs.Child`): started with a log, stopped if never ready."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lowbit import LowbitError, procs


@dataclass
class Sleeper(procs.Child):
    proc: object = None
    log_path: Path | None = None


def test_a_child_that_never_gets_ready_is_stopped_and_the_error_shows_its_log(tmp_path):
    child = Sleeper()
    cmd = [sys.executable, "-c", "import time; print('warming up', flush=True); time.sleep(60)"]
    with pytest.raises(LowbitError, match=r"(?s)sleeper was not ready after 1 s.*warming up"):
        child.launch(cmd, tmp_path / "sleeper.log", lambda: False, 1.0, "sleeper")
    assert child.proc.poll() is not None and not child.alive()


def test_a_child_that_exits_early_is_explained(tmp_path):
    child = Sleeper()
    cmd = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with pytest.raises(LowbitError, match="exit 3 in .*early.log"):
        child.launch(cmd, tmp_path / "early.log", lambda: False, 30.0, "early",
                     explain=lambda code, log: f"exit {code} in {log}")


def test_with_stops_a_ready_child(tmp_path):
    with Sleeper() as child:
        child.launch([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log", lambda: True, 5, "s")
        assert child.alive()
    assert not child.alive() and child.proc.returncode is not None
