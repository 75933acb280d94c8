"""Signals to the top `invoke` process stop the whole tree (issue 13, item 6).

The real tasks run as a process manager or a closed terminal would run them: `python -m invoke TASK` with
stdin not a terminal, then a signal to the invoke process only. Afterwards no descendant may be left and
the port must be closed. Servers bind 127.0.0.1 at free ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lowbit.paths import kit_root
from lowbit.procs import can_connect, free_port
from tests.conftest import default_sigint


def _start(args: list[str], tmp_path: Path, ready_port: int, timeout: float = 120) -> tuple[subprocess.Popen,
                                                                                            list[psutil.Process]]:
    """`python -m invoke ARGS` (stdin /dev/null, its own session so the test's group is never hit), up and
    listening on `ready_port`; returns it and its descendants."""
    env = {**os.environ, "LOWBIT_RUNS": str(tmp_path / "runs")}
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=kit_root(), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + timeout
    while not can_connect("127.0.0.1", ready_port, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
            _kill_tree(proc, psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else [])
            pytest.fail(f"{args} did not start listening on {ready_port}:\n{out}\n{err}")
        time.sleep(0.2)
    return proc, psutil.Process(proc.pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _kill_tree(proc: subprocess.Popen, descendants: list[psutil.Process]) -> None:
    for p in [*_alive(descendants)]:
        p.kill()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _signal_and_check(proc, descendants, port: int, sig: int, within: float = 20.0) -> str:
    """Send `sig` to the invoke process; assert the tree is gone and the port closed within `within` s."""
    try:
        os.kill(proc.pid, sig)
        try:
            _, err = proc.communicate(timeout=within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"invoke still running {within:.0f} s after {signal.Signals(sig).name}")
        deadline = time.monotonic() + 5
        while _alive(descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _alive(descendants)
        assert not left, f"left running after {signal.Signals(sig).name}: {[p.cmdline()[:3] for p in left]}"
        assert not can_connect("127.0.0.1", port, 0.5), f"port {port} still answers"
        return err
    finally:
        _kill_tree(proc, descendants)


@pytest.fixture()
def mirror_dir(tmp_path) -> Path:
    repo = tmp_path / "models" / "owner" / "repo"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("hello\n")
    return tmp_path / "models"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_mirror_stops_on_sigterm_and_sighup(mirror_dir, tmp_path, sig):
    port = free_port()
    proc, tree = _start(["mirror", "--dir", str(mirror_dir), "--port", str(port)], tmp_path, port)
    assert tree, "the kit process runs under invoke"
    _signal_and_check(proc, tree, port, sig)


def test_sigint_without_a_terminal_stops_cleanly(mirror_dir, tmp_path):
    port = free_port()
    proc, tree = _start(["mirror", "--dir", str(mirror_dir), "--port", str(port)], tmp_path, port)
    err = _signal_and_check(proc, tree, port, signal.SIGINT)
    assert "ValueError" not in err and "Traceback" not in err, err


def test_serve_stops_llama_server_on_sigterm(toy_model, tmp_path):
    port = free_port()
    proc, tree = _start(["serve", "--model", str(toy_model), "--port", str(port), "--parallel", "1",
                         "--ctx", "512"], tmp_path, port)
    names = [p.name() for p in tree]
    assert "llama-server" in names, names
    _signal_and_check(proc, tree, port, signal.SIGTERM)


def test_killed_invoke_leaves_no_llama_server(toy_model, tmp_path):
    """SIGKILL cannot be handled: the kit process and llama-server follow through parent-death signals."""
    port = free_port()
    proc, tree = _start(["serve", "--model", str(toy_model), "--port", str(port), "--parallel", "1",
                         "--ctx", "512"], tmp_path, port)
    _signal_and_check(proc, tree, port, signal.SIGKILL)


def test_rpc_worker_stops_on_sighup(tmp_path, llama_build):
    port = free_port()
    proc, tree = _start(["rpc-worker", "--port", str(port)], tmp_path, port, timeout=60)
    assert "ggml-rpc-server" in [p.name() for p in tree]
    _signal_and_check(proc, tree, port, signal.SIGHUP)


def test_lab_stops_jupyter_on_sigterm(tmp_path):
    port = free_port()
    proc, tree = _start(["lab", "--port", str(port)], tmp_path, port, timeout=180)
    time.sleep(1)  # Jupyter may start helpers after it listens
    tree = psutil.Process(proc.pid).children(recursive=True)
    _signal_and_check(proc, tree, port, signal.SIGTERM, within=40)


def test_interrupt_on_signals_turns_sigterm_into_ctrl_c():
    """Inside `interrupt_on_signals` a SIGTERM runs the same except-KeyboardInterrupt cleanup as Ctrl-C."""
    kwargs = {"seconds": 30}
    code = ("import json,sys,time; from lowbit import procs\n"
            "with procs.interrupt_on_signals():\n"
            "    try: print('ready', flush=True); time.sleep(json.loads(sys.argv[1])['seconds'])\n"
            "    except KeyboardInterrupt: print('interrupted', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert out.strip() == "interrupted"
