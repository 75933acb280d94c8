"""lowbit tasks: `invoke --list` shows them all.

Thin by design: each task declares its flags and hands them to the lowbit package, which runs in
the kit's own interpreter (the one `invoke setup` prepared). This file imports only invoke and the
standard library, so `invoke --list` works before setup, whatever Python carries invoke.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from invoke import Exit, task

ROOT = Path(__file__).resolve().parent
KIT_PYTHON_FILE = ROOT / ".lowbit" / "python"  # written by `invoke setup`


def _kit_python() -> str:
    if KIT_PYTHON_FILE.exists():
        python = KIT_PYTHON_FILE.read_text().strip()
        if Path(python).exists():
            return python
    raise Exit("lowbit is not set up in this checkout: run `invoke setup` first.", code=1)


def _kit(c, target: str, python: str | None = None, **kwargs) -> None:
    """Run `lowbit.MODULE:FUNCTION(**kwargs)` in the kit's interpreter; exit with its status."""
    cmd = [python or _kit_python(), "-m", "lowbit", target, json.dumps(kwargs)]
    with c.cd(str(ROOT)):
        result = c.run(shlex.join(cmd), warn=True, pty=sys.stdout.isatty(), echo=False)
    if result is not None and result.exited:
        raise Exit(code=result.exited)


# --- setup and build ------------------------------------------------------------------------


@task(
    help={
        "backend": "auto|cpu|cuda|metal|vulkan (auto: cuda if nvidia-smi lists a GPU, metal on Apple silicon)",
        "source": "sdist (default: llama.cpp vendored in the pinned llama-cpp-python), git, or a PATH",
        "cuda_arch": "CUDA architectures, e.g. 90 (needed when no GPU is present to detect it)",
        "force": "rebuild llama.cpp even if a cached build exists",
        "no_replicas": "skip building the offline replica models",
    }
)
def setup(c, backend="auto", source="sdist", cuda_arch=None, force=False, no_replicas=False):
    """Create/reuse the environment, build llama.cpp, bind Python to it, register the kernel."""
    kwargs = {"backend": backend, "source": source, "cuda_arch": cuda_arch, "force": force,
              "replicas": not no_replicas}
    with c.cd(str(ROOT)):
        result = c.run(shlex.join([sys.executable, "-m", "lowbit.bootstrap", json.dumps(kwargs)]),
                       warn=True, pty=sys.stdout.isatty(), echo=False)
    if result is not None and result.exited:
        raise Exit(code=result.exited)


@task(
    help={
        "backend": "auto|cpu|cuda|metal|vulkan",
        "source": "sdist (default), git, or a PATH to a llama.cpp checkout",
        "cuda_arch": "CUDA architectures, e.g. 90",
        "force": "rebuild even if cached",
    }
)
def build_llama(c, backend="auto", source="sdist", cuda_arch=None, force=False):
    """Build llama.cpp (cached per commit, backend, flags and patches) and make it active."""
    _kit(c, "lowbit.build:build_llama_command", backend=backend, source=source, cuda_arch=cuda_arch, force=force)


@task
def doctor(c):
    """Report this machine (CPU, SIMD, RAM, disk, GPUs) and whether setup is complete."""
    _kit(c, "lowbit.doctor:doctor_command")


@task(
    help={
        "k": "only tests matching this pytest -k expression",
        "no_notebooks": "skip the notebook (nbval/papermill) tests",
        "lint": "also run ruff (default on)",
    }
)
def test(c, k=None, no_notebooks=False, lint=True):
    """Run the whole test suite: ruff, pytest, and every notebook under nbval."""
    _kit(c, "lowbit.testing:run_tests", k=k, notebooks=not no_notebooks, lint=lint)


# --- serve and scale out: llama-server, RPC workers (lowbit/serve.py, lowbit/rpc.py) ---------


@task(
    help={
        "model": "catalog name, Hub repo id or path to a GGUF (first shard of a split set)",
        "host": "address to listen on (default 127.0.0.1; anything else needs --api-key or --insecure)",
        "port": "TCP port (default 8080)",
        "api_key": "key clients must send (Authorization: Bearer KEY); default: $LOWBIT_API_KEY",
        "parallel": "requests served at once (server slots, default 4)",
        "ctx": "context tokens per request (default 4096; the server holds ctx x parallel)",
        "plan": "offload plan: auto (default), rule, ngl=N, experts-cpu, none",
        "rpc": "RPC workers to spread the model over: host:port,host:port",
        "insecure": "allow a non-loopback host without an API key (not recommended)",
    }
)
def serve(c, model, host="127.0.0.1", port=8080, api_key=None, parallel=4, ctx=4096, plan="auto", rpc=None,
          insecure=False):
    """Serve a model with llama-server (OpenAI-compatible API) until Ctrl-C."""
    _kit(c, "lowbit.serve:serve_command", model=model, host=host, port=port, api_key=api_key,
         parallel=parallel, ctx=ctx, plan=plan, rpc=rpc, insecure=insecure)


@task(
    help={
        "host": "address to listen on (default 127.0.0.1; RPC has no authentication: trusted networks only)",
        "port": "TCP port (default 50052)",
        "mem": "not supported by this llama.cpp's worker (explains the alternative)",
        "threads": "CPU threads for the worker's CPU device",
    }
)
def rpc_worker(c, host="127.0.0.1", port=50052, mem=None, threads=None):
    """Run a llama.cpp RPC worker (ggml-rpc-server) that a client reaches with --rpc host:port."""
    _kit(c, "lowbit.rpc:rpc_worker_command", host=host, port=port,
         mem=float(mem) if mem is not None else None, threads=int(threads) if threads is not None else None)
