"""Child processes that must not outlive us (llama-server, RPC workers, Jupyter): start, wait, stop.

Standard library only. One lifecycle for every long-running command:
- `lowbit.__main__` runs each command inside `interrupt_on_signals()`: SIGTERM and SIGHUP become the
  same KeyboardInterrupt as Ctrl-C, so every command's Ctrl-C path (stop the children, then exit) also
  runs when a process manager, a closed terminal or `invoke` itself sends a signal; and the kit process
  takes a parent-death signal (`die_with_parent`), so a killed `invoke` cannot leave it serving.
- Each child (`spawn`) gets its own session (a Ctrl-C in the terminal reaches lowbit, which then stops
  the child in order, instead of both racing) and, on Linux, a parent-death signal; `stop` ends the
  child's whole process group, grandchildren included.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lowbit import LowbitError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (no-op elsewhere).

    With `interrupt_on_signals` active, that SIGTERM runs the normal Ctrl-C cleanup.
    """
    parent = os.getppid()
    _die_with_parent()
    if sys.platform.startswith("linux") and parent != 1 and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before the request took effect


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, _raise_interrupt) for s in sigs}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def spawn(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` with stdout+stderr appended to `log_path`; it dies if this process dies."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(map(str, cmd)), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    proc.lowbit_group = True  # type: ignore[attr-defined]  (it leads its own session and process group)
    return proc


def stop(proc: subprocess.Popen | None, grace: float = 10.0, first: int = signal.SIGTERM) -> int | None:
    """Stop `proc` (`first`, default SIGTERM, then SIGKILL after `grace` seconds) and whatever it started in
    its process group (a `spawn`ed child leads its own); return its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        _signal_group(proc, first)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=grace)
    _signal_group(proc, signal.SIGKILL)  # grandchildren left in the group go too
    proc.lowbit_group = False  # type: ignore[attr-defined]  (once: the group's number may be reused later)
    return proc.returncode


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the child's own process group when `spawn` made it lead one, else just the child."""
    if getattr(proc, "lowbit_group", False):
        try:
            os.killpg(proc.pid, sig)  # a group outlives its reaped leader while members remain
        except (ProcessLookupError, PermissionError):
            pass
        return
    if proc.returncode is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (a UNIX socket path counts as local too)."""
    if host == "localhost" or host.endswith(".sock"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def connect_host(host: str) -> str:
    """The address to connect to for a server bound to `host` (a wildcard bind is reached on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host in ("::", "[::]") else host.strip("[]"))


def port_in_use(host: str, port: int) -> bool:
    """True if binding (host, port) fails now, i.e. someone else listens there."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (chosen by the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def can_connect(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((connect_host(host), port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    """The last `lines` meaningful lines of a log (gdb backtraces after an abort are dropped)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    keep = [ln for ln in text if ln.strip() and not ln.startswith(("#", "[New LWP", "[Thread", "[Inferior"))]
    return "\n".join(keep[-lines:])


def lan_address() -> str | None:
    """This machine's address on its default route (what attendees on the LAN connect to), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP connect sends nothing; it only picks a route
            return s.getsockname()[0]
        except OSError:
            return None


def wait_until(predicate, timeout: float, proc: subprocess.Popen, what: str, log_path: Path,
               interval: float = 0.2, explain=None) -> None:
    """Poll `predicate()` until true; fail early with the log tail if `proc` exits (or with
    `explain(status, log_path)`, when given), or after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            if explain is not None:
                raise LowbitError(explain(proc.returncode, log_path))
            raise LowbitError(f"{what} exited with status {proc.returncode} before it was ready. "
                              f"Last lines of {log_path}:\n{log_tail(log_path)}")
        if predicate():
            return
        if time.monotonic() > deadline:
            raise LowbitError(f"{what} was not ready after {timeout:.0f} s (see {log_path}). Last lines:\n"
                              f"{log_tail(log_path)}")
        time.sleep(interval)


class Service:
    """Something the kit started that must be stopped: `with` stops it on the way out, whatever happened."""

    def stop(self) -> int | None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Child(Service):
    """A child process with the kit's one lifecycle: `launch` spawns it (own process group, log file,
    dies with us), waits until `ready()`, and stops it if it never gets there; `stop` sends SIGTERM, then
    SIGKILL after `grace` seconds, to its whole process group. Subclasses set `proc` and `log_path`."""

    proc: subprocess.Popen | None
    log_path: Path

    def launch(self, cmd: Sequence[str], log_path: Path, ready, timeout: float, what: str,
               env: dict[str, str] | None = None, interval: float = 0.2, explain=None) -> None:
        """Start `cmd` logging to `log_path`, then poll `ready()` (see `wait_until`); on any failure or
        interrupt while waiting, the child is stopped before the error propagates."""
        self.log_path = log_path
        self.proc = spawn(cmd, log_path, env=env)
        try:
            wait_until(ready, timeout, self.proc, what, log_path, interval=interval, explain=explain)
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        return stop(self.proc, grace)


def env_without(prefixes: Sequence[str]) -> dict[str, str]:
    """This environment minus variables starting with any of `prefixes` (e.g. LLAMA_ARG_ overrides)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(tuple(prefixes))}


def run_checked(cmd: Sequence[str], what: str, env: dict | None = None, cwd: Path | None = None) -> str:
    """Run `cmd` to completion (no stdin) and return its stdout + stderr; a failure raises a LowbitError
    naming `what`, its exit status and the output's tail."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, errors="replace", env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise LowbitError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2500:]}")
    return proc.stdout + proc.stderr


def peak_rss(cmd: Sequence[str], timeout: float | None = 600) -> tuple[int, str]:
    """Run `cmd` to completion: (its peak resident memory, VmHWM, in bytes; its stderr). The child's own
    peak, polled from /proc (Linux): rusage's ru_maxrss would include this large Python process, which the
    child inherits from fork before exec. Past `timeout` seconds it is killed and a LowbitError raised."""
    import re
    import tempfile

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        status = Path(f"/proc/{proc.pid}/status")
        peak, start = 0, time.monotonic()
        try:
            while proc.poll() is None:
                if timeout is not None and time.monotonic() - start > timeout:
                    raise LowbitError(f"{Path(cmd[0]).name} ran past {timeout:g} s")
                try:
                    m = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
                    peak = max(peak, int(m.group(1)) * 1024) if m else peak
                except OSError:
                    pass
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        log = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise LowbitError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {log.strip().splitlines()[-1:]}")
    return peak, log


def drop_flags(flags: list[str], with_value: set[str], switches: set[str] = frozenset()) -> list[str]:
    """A command line's flags without `with_value` flags (and the value after each) and `switches`."""
    out, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag in with_value:
            skip = True
        elif flag not in switches:
            out.append(flag)
    return out
