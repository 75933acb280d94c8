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


# --- fetch, shards, mirror, ollama (lowbit.hub, lowbit.shards, lowbit.mirror, lowbit.ollama) -------


@task(
    iterable=["include"],
    help={
        "model": "catalog name or Hub repo id OWNER/NAME",
        "quant": "quant to fetch, e.g. UD-IQ1_S (selects files matching *QUANT*)",
        "include": "file pattern to fetch (fnmatch, repeatable), e.g. --include '*UD-IQ1_S*'",
        "dest": "folder to download into (default: models/OWNER/NAME)",
        "dry_run": "show the files, sizes, total and free disk, then stop",
        "endpoint": "Hub endpoint, e.g. a workshop mirror http://HOST:PORT (default: HF_ENDPOINT or the Hub)",
        "fast": "hf_xet high-performance mode (HF_XET_HIGH_PERFORMANCE=1)",
        "revision": "branch, tag or commit (default: main)",
    }
)
def fetch(c, model, quant=None, include=None, dest=None, dry_run=False, endpoint=None, fast=False,
          revision=None):
    """Download model files: plan + disk check first, one progress bar, sha256-verified, resumable."""
    _kit(c, "lowbit.hub:fetch_command", model=model, quant=quant, include=include or None, dest=dest,
         dry_run=dry_run, endpoint=endpoint, fast=fast, revision=revision)


@task(help={"first": "first shard, NAME-00001-of-0000N.gguf", "out": "merged file (default: NAME.gguf)"})
def merge(c, first, out=None):
    """Merge a shard set into one GGUF (for Ollama), verified tensor by tensor; never overwrites."""
    _kit(c, "lowbit.shards:merge_command", first=first, out=out)


@task(
    help={
        "file": "GGUF file to split",
        "max_size": "max size per shard, e.g. 2G or 500M",
        "max_tensors": "max tensors per shard (always works)",
        "out": "output prefix (default: FILE without .gguf)",
    }
)
def split(c, file, max_size=None, max_tensors=None, out=None):
    """Split a GGUF into NAME-0000k-of-0000N.gguf shards, verified."""
    _kit(c, "lowbit.shards:split_command", file=file, max_size=max_size,
         max_tensors=int(max_tensors) if max_tensors else None, out=out)


@task(
    help={
        "dir": "models folder whose OWNER/NAME/ subfolders are served as repos",
        "host": "address to bind (default 127.0.0.1; 0.0.0.0 serves the room)",
        "port": "port (default 8088)",
        "verbose": "log every request",
    }
)
def mirror(c, dir, host="127.0.0.1", port=8088, verbose=False):  # noqa: A002 (flag name)
    """Serve downloaded repos as a read-only Hugging Face Hub endpoint for a workshop."""
    _kit(c, "lowbit.mirror:mirror_command", dir=dir, host=host, port=int(port), verbose=verbose)


@task(help={"file": "merged R1-family GGUF", "out": "Modelfile path (default: FILE.Modelfile)",
            "min_p": "min_p sampling floor (default 0.05)"})
def ollama(c, file, out=None, min_p=0.05):
    """Write an Ollama Modelfile (template, stop tokens, temperature 0.6, min_p) for a merged GGUF."""
    _kit(c, "lowbit.ollama:ollama_command", file=file, out=out, min_p=float(min_p))
