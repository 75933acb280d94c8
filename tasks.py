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


@task(help={"json": "print the report as JSON"})
def doctor(c, json=False):  # noqa: A002 (the flag is --json)
    """Report this machine (CPU, SIMD, RAM, disk, GPUs, builds) and whether setup is complete."""
    _kit(c, "lowbit.doctor:doctor_command", json_output=json)


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


# --- replicas and the model catalog ----------------------------------------------------------


@task(
    help={
        "force": "rebuild even if cached",
        "only": "build just this replica (r1, distill-qwen, distill-llama, bitnet); repeatable",
    },
    iterable=["only"],
)
def replicas(c, force=False, only=None):
    """Build, verify and cache the offline replica models (random weights, real layout and tokenizers)."""
    _kit(c, "lowbit.replicas:replicas_command", force=force, only=list(only or []) or None)


@task
def models(c):
    """List the model catalog and the offline replicas (and whether each replica is built)."""
    _kit(c, "lowbit.catalog:models_command")
