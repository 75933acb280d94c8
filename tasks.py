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


# --- notebooks and pipelines ----------------------------------------------------------------


@task(
    iterable=["param"],
    help={
        "name": "lesson to run (default 00_quickstart; `invoke notebooks` lists them)",
        "param": "key=value, repeatable (-p model=r1 -p n_predict=16); typed by the lesson's parameters cell",
        "params_file": "YAML/JSON file of parameters (-p values override it)",
    },
)
def run_notebook(c, name="00_quickstart", param=None, params_file=None):
    """Run a lesson with papermill into runs/<time>-<name>/ (notebook, HTML, metrics.json, log)."""
    _kit(c, "lowbit.notebooks:run_notebook", name=name, param=param or [], params_file=params_file)


@task(
    iterable=["param"],
    help={
        "name": "pipeline: pipelines/NAME.yaml (workshop, r1-iq1s) or a YAML path",
        "param": "key=value, repeatable: overrides the pipeline's shared parameters",
    },
)
def run_pipeline(c, name="workshop", param=None):
    """Run a pipeline of lessons; writes runs/<time>-pipeline-NAME/index.html."""
    _kit(c, "lowbit.pipelines:run_pipeline", name=name, param=param or [])


@task
def notebooks(c):
    """List the lessons with their purpose and parameters."""
    _kit(c, "lowbit.notebooks:list_lessons")


@task(help={"port": "port on 127.0.0.1 (default: a free one)", "browser": "open a browser too"})
def lab(c, port=0, browser=False):
    """Open the lessons in JupyterLab (loopback, token auth, the lowbit kernel); Ctrl-C stops it."""
    _kit(c, "lowbit.lab:lab", port=int(port), browser=browser)
