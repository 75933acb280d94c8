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


# --- chat templates, special tokens and padding (lowbit/chat.py, tokens.py, padding.py) ------


@task(
    help={
        "model": "catalog name, GGUF file or HF tokenizer directory",
        "message": "the user message to render",
        "system": "an optional system prompt",
        "no_fix": "leave the rendered text as is (shows a double BOS where there is one)",
    }
)
def template(c, model, message="Hello! What is 1+1?", system=None, no_fix=False):
    """Render a message with the model's own chat template; print the prompt and its token IDs."""
    _kit(c, "lowbit.chat:template_command", model=model, message=message, system=system, no_fix=no_fix)


@task(
    iterable=["model", "base"],
    help={
        "model": "a tokenizer (catalog name, GGUF, HF dir, tokenizer.json); repeat for the remap table",
        "base": "MODEL=PATH: the base tokenizer of MODEL, for the 'same ID in base' column (repeatable)",
        "json": "print role -> ID as JSON",
    },
)
def tokens(c, model=None, base=None, json=False):
    """Special tokens (BOS/EOS/PAD/UNK, think tags, role tokens) with IDs, across models."""
    _kit(c, "lowbit.tokens:tokens_command", model=model, base=base, as_json=json)


@task(
    help={
        "path": "HF tokenizer/model directory or GGUF file (shard 00001 for a split set)",
        "pad": "pad token to use (default: the family's dedicated pad token)",
        "out": "where to write the fixed copy (default: NAME-padfix next to the original)",
        "check": "only audit, write nothing (exit 1 if the padding is wrong)",
    }
)
def fix_padding(c, path, pad=None, out=None, check=False):
    """Audit the pad token (pad = EOS, missing, out of range) and write a fixed copy."""
    _kit(c, "lowbit.padding:fix_padding_command", path=path, pad=pad, out=out, check=check)
