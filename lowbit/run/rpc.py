"""Scale out with llama.cpp's RPC backend: start `ggml-rpc-server` workers, pass `--rpc host:port,...`.

A worker exposes its machine's devices (its GPUs, or its CPU and RAM) over TCP; a llama.cpp client
started with `--rpc` treats each worker as one more device and spreads layers, KV cache and compute
over them in proportion to their free memory (`--tensor-split` on the client overrides that). The
protocol has **no authentication and no encryption**: anyone who can reach a worker's port can run
code-sized buffers through it and read what it holds. Bind to loopback (the default) or a trusted,
private network only. At llama.cpp 0c1e5709 the worker binary is `ggml-rpc-server` and has no
memory-limit option.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lowbit import LowbitError, flag_number, procs
from lowbit.paths import runs_dir
from lowbit.toolchain.build import active_build
from lowbit.ui import step, warn

DEFAULT_PORT = 50052
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Endpoint:
    """One RPC worker address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_rpc(rpc: str | Iterable[str] | None) -> list[Endpoint]:
    """Parse `host:port,host:port` (or a list of such strings; IPv6 as `[::1]:50052`) and validate it."""
    if rpc is None:
        return []
    parts = [p.strip() for item in ([rpc] if isinstance(rpc, str) else rpc) for p in str(item).split(",")]
    if not any(parts):
        return []
    endpoints: list[Endpoint] = []
    for part in parts:
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", part)
        if not m:
            raise LowbitError(f"--rpc entry {part!r} is not host:port (e.g. 192.168.1.20:{DEFAULT_PORT}, "
                              f"[::1]:{DEFAULT_PORT}); separate workers with commas")
        host, port_s = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        port = int(port_s)
        if not 1 <= port <= 65535:
            raise LowbitError(f"--rpc entry {part!r}: port {port} is outside 1-65535")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOST_RE.match(host):
                raise LowbitError(f"--rpc entry {part!r}: {host!r} is not an IP address or host "
                                  "name") from None
        ep = Endpoint(host, port)
        if ep in endpoints:
            raise LowbitError(f"--rpc lists {ep} twice; give each worker once (it would count as two "
                              "devices)")
        endpoints.append(ep)
    return endpoints


def rpc_flags(rpc: str | Iterable[str] | None) -> list[str]:
    """llama.cpp flags for `--rpc host:port,...` (validated); [] when no workers are given.

    Layers reach the workers like they reach a GPU: through `-ngl` (llama.cpp's default `auto` fits as
    many as the devices' reported memory allows).
    """
    endpoints = parse_rpc(rpc)
    return ["--rpc", ",".join(map(str, endpoints))] if endpoints else []


RPC_WORKER_GONE = "an RPC worker went away or could not be reached; restart the workers, then run again"


def worker_failure(log: str, returncode: int | None = None, endpoints: Iterable[Endpoint] = ()) -> bool:
    """Whether an RPC worker was lost: ggml-rpc's own messages in the llama.cpp log, or — when the client died
    before it could log anything — a death by SIGPIPE (it wrote to the worker's closed socket) or a worker
    that no longer accepts connections."""
    if "RPC" in log and any(s in log for s in ("crashed", "send failed", "recv failed", "Failed to connect",
                                               "failed to connect")):
        return True
    if returncode is not None and returncode == -getattr(signal, "SIGPIPE", 13):
        return True
    return any(not procs.can_connect(ep.host, ep.port, 1.0) for ep in endpoints)


def check_reachable(rpc: str | Iterable[str] | None, timeout: float = 3.0) -> list[Endpoint]:
    """Fail with one clear message if any worker does not accept a TCP connection."""
    endpoints = parse_rpc(rpc)
    dead = [ep for ep in endpoints if not procs.can_connect(ep.host, ep.port, timeout)]
    if dead:
        raise LowbitError(f"RPC worker(s) not reachable: {', '.join(map(str, dead))}. Start one on each "
                          "machine with `invoke rpc-worker --host <its address> --port <port>` and check "
                          "firewalls.")
    return endpoints


@dataclass
class RpcWorker(procs.Child):
    """A running `ggml-rpc-server` started by lowbit; stop() (or `with`) ends it."""

    host: str
    port: int
    proc: subprocess.Popen | None
    log_path: Path
    command: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)


def worker_command(host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int | None = None,
                   cache: bool = False) -> list[str]:
    """The `ggml-rpc-server` command line from the active build."""

    cmd = [str(active_build().tool("ggml-rpc-server")), "--host", host, "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    if cache:
        cmd += ["--cache"]
    return cmd


def start_worker(host: str = "127.0.0.1", port: int | None = None, threads: int | None = None,
                 cache: bool = False, log_dir: Path | None = None, timeout: float = 30.0) -> RpcWorker:
    """Start one worker (a free port when `port` is None) and wait until it accepts connections."""
    port = port or procs.free_port(host if procs.is_loopback(host) else "0.0.0.0")
    if procs.port_in_use(host, port):
        raise LowbitError(f"port {port} on {host} is already in use; pick another with --port")
    cmd = worker_command(host, port, threads, cache)
    log_path = _log_dir(log_dir) / f"rpc-worker-{port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    # The worker prints with stdio buffering: nothing reaches a piped log until it exits, so readiness is
    # a TCP connect (the worker drops a connection that sends no command and keeps serving).
    worker = RpcWorker(host, port, None, log_path, cmd)
    worker.launch(cmd, log_path, lambda: procs.can_connect(host, port, 0.5), timeout,
                  f"ggml-rpc-server on {host}:{port}", env=procs.env_without(["GGML_RPC_DEBUG"]))
    return worker


def start_workers(n: int, threads: int | None = 1, log_dir: Path | None = None) -> list[RpcWorker]:
    """Start `n` workers on 127.0.0.1 at free ports (for lessons and tests); all or none."""
    workers: list[RpcWorker] = []
    try:
        for _ in range(n):
            workers.append(start_worker("127.0.0.1", None, threads=threads, log_dir=log_dir))
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: Iterable[RpcWorker]) -> None:
    for w in workers:
        w.stop()


def rpc_arg(workers: Iterable[RpcWorker]) -> str:
    """The `--rpc` value for these workers."""
    return ",".join(str(w.endpoint) for w in workers)


def _log_dir(log_dir: Path | None) -> Path:
    return Path(log_dir) if log_dir else runs_dir() / "serve"


MEM_REMOVED = (
    "--mem is not supported by this llama.cpp: its worker (ggml-rpc-server at 0c1e5709) dropped the old "
    "`-m MEM` option and always offers its device's free memory. To give a worker a smaller share, weight "
    "the devices on the client instead, e.g. `--tensor-split 3,1` (one number per device, RPC workers "
    "first, in --rpc order), or run fewer layers there with -ngl."
)


def rpc_worker_command(host: str = "127.0.0.1", port: int = DEFAULT_PORT, mem: float | None = None,
                       threads: int | None = None, cache: bool = False) -> int:
    """`invoke rpc-worker`: run one worker in the foreground until Ctrl-C."""

    if mem is not None:
        raise LowbitError(MEM_REMOVED)
    warn("llama.cpp RPC has no authentication and no encryption: anyone who can reach this port can use "
         "this machine's memory and compute and read what it holds. Use it on trusted networks only.")
    if not procs.is_loopback(host):
        warn(f"binding to {host}, not loopback: every machine that can route to {host}:{port} can connect. "
             "Firewall the port to the client's address.")
    worker = start_worker(host, port, threads=flag_number("threads", threads, int, 1), cache=cache)
    address = procs.lan_address() if host in ("0.0.0.0", "::") else host
    step(f"RPC worker ready on {host}:{port} (log: {worker.log_path})")
    print(f"On the client add:  --rpc {Endpoint(address or host, port)}")
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while worker.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        worker.stop()
        print("\nRPC worker stopped.")
        return 0
    raise LowbitError(f"the RPC worker exited with status {worker.proc.returncode}. Last lines of "
                      f"{worker.log_path}:\n{procs.log_tail(worker.log_path)}")
