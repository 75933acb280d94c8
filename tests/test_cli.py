"""The `lowbit` console script: invoke's Program over tasks.py (same tasks, flags and help), -v/-q, secrets."""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import MockContext, Result

from lowbit.cli import load_tasks
from lowbit.models.mirror import MirrorHandler, MirrorServer
from lowbit.paths import kit_root

BIN = Path(sys.executable).parent
REPO = "acme/Cli-GGUF"


def lowbit(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = BIN / "lowbit"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: the console script comes with `pip install -e .` (run `invoke setup`)")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_lowbit_help_lists_every_task_from_any_folder(tmp_path):
    proc = lowbit("--help", cwd=tmp_path)  # not the checkout: tasks.py is found through the installed package
    assert proc.returncode == 0, proc.stderr
    names = load_tasks().task_names
    assert len(names) > 20
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()}
    assert set(names) <= listed, set(names) - listed
    assert "-v, --verbose" in proc.stdout and "-q, --quiet" in proc.stdout and "Usage: lowbit" in proc.stdout


@pytest.mark.parametrize("task", ["fetch", "serve", "setup"])
def test_task_help_is_invokes_word_for_word(task, tmp_path):
    ours = lowbit(task, "--help", cwd=tmp_path)
    theirs = subprocess.run([str(BIN / "invoke"), "--help", task], cwd=kit_root(), capture_output=True, text=True)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout.split("Docstring:")[1] == theirs.stdout.split("Docstring:")[1]
    if task == "fetch":
        for flag in ("--exclude", "--local-dir", "--token", "--cache-dir", "--[no-]hf-cache", "--include"):
            assert flag in ours.stdout


def test_missing_tasks_file_is_a_clear_error(tmp_path):
    from lowbit import LowbitError

    with pytest.raises(LowbitError, match="tasks.py"):
        load_tasks(tmp_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "models"
    (root / REPO).mkdir(parents=True)
    (root / REPO / "README.md").write_text("# cli\n")
    (root / REPO / "m-Q4_0.gguf").write_bytes(random.Random(1).randbytes(50_000))
    handler = type("Auth", (MirrorHandler,), {"seen": []})
    handler._route = lambda self: (self.seen.append(self.headers.get("Authorization")),
                                   MirrorHandler._route(self))
    with MirrorServer(root, handler=handler) as s:
        s.seen = handler.seen
        yield s


def test_quiet_and_verbose_reach_the_task(server, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "LOWBIT_LOG_LEVEL": ""}
    args = ["fetch", "--model", REPO, "--include", "README.md", "--endpoint", server.url]
    normal = lowbit(*args, "--dest", str(tmp_path / "a"), cwd=kit_root(), env=env)
    quiet = lowbit("-q", *args, "--dest", str(tmp_path / "b"), cwd=kit_root(), env=env)
    verbose = lowbit("-v", *args, "--dest", str(tmp_path / "c"), cwd=kit_root(), env=env)
    assert normal.returncode == quiet.returncode == verbose.returncode == 0, normal.stderr + quiet.stderr
    assert "downloaded and verified" in normal.stderr and "lowbit.models.fetch:fetch_command" not in normal.stderr
    assert "downloaded and verified" not in quiet.stderr and "README.md" in quiet.stdout  # the plan table stays
    assert "lowbit.models.fetch:fetch_command" in verbose.stderr  # a debug line
    for d in "abc":
        assert (tmp_path / d / "README.md").read_text() == "# cli\n"
    assert lowbit("-q", "-v", "models", cwd=kit_root()).returncode == 2


def test_token_reaches_the_server_but_never_a_command_line(server, tmp_path):
    c = MockContext(run=Result())
    load_tasks()["fetch"](c, model=REPO, include=["README.md"], exclude=["*.gguf"], local_dir="here",
                          token="hf_s3cret")
    (call,) = c.run.call_args_list
    assert "hf_s3cret" not in call.args[0]
    kwargs = json.loads(shlex.split(call.args[0])[-1])
    assert kwargs["exclude"] == ["*.gguf"] and kwargs["local_dir"] == "here" and "token" not in kwargs
    assert json.loads(call.kwargs["env"]["LOWBIT_SECRET_KWARGS"]) == {"token": "hf_s3cret"}
    server.seen.clear()
    proc = lowbit("fetch", "--model", REPO, "--include", "README.md", "--endpoint", server.url, "--token",
                  "hf_s3cret", "--dest", str(tmp_path / "t"), cwd=kit_root(),
                  env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Bearer hf_s3cret" in server.seen
