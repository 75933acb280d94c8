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


# --- BitNet b1.58 2B4T (lowbit.bitnet, benchmarks/bitnet.py) ----------------------------------


@task(
    help={
        "src": "2B4T-layout checkpoint: folder, catalog name or Hub repo id (fetched first)",
        "quant": "tq2_0 (2.06 bpw, fastest) or tq1_0 (1.69 bpw, smallest)",
        "out": "output GGUF (default: SRC/ggml-model-QUANT.gguf)",
        "engine": "llama.cpp (default) or bitnet.cpp (checks clang >= 18 and network, says what is missing)",
    }
)
def bitnet_convert(c, src, quant="tq2_0", out=None, engine="llama.cpp"):
    """Convert a BitNet b1.58 2B4T checkpoint to a TQ2_0/TQ1_0 GGUF (verified, then renamed into place)."""
    _kit(c, "lowbit.bitnet:convert_command", src=src, quant=quant, out=out, engine=engine)


@task(
    help={
        "model": "the HF checkpoint (reference): folder or catalog name",
        "gguf": "GGUF to check (default: MODEL/ggml-model-tq2_0.gguf, converted if missing)",
        "positions": "token positions compared",
        "activation": "override the GGUF's FFN activation (silu shows what mainline's graph gives)",
    }
)
def bitnet_check(c, model, gguf=None, positions=256, activation=None):
    """Compare llama.cpp's logits with transformers' BitNetForCausalLM (online quantization)."""
    _kit(c, "lowbit.bitnet:check_command", model=model, gguf=gguf, positions=int(positions),
         activation=activation)


@task(
    help={
        "gguf": "the converted GGUF",
        "text": "a text file (wikitext-2 test set for the published ≈17)",
        "ctx": "context per chunk",
        "chunks": "limit the number of chunks",
        "max_ppl": "fail above this perplexity (the gate for a real download)",
    }
)
def bitnet_perplexity(c, gguf, text, ctx=512, chunks=None, max_ppl=None):
    """Perplexity of a BitNet GGUF with llama-perplexity (correctness gate for real downloads)."""
    _kit(c, "lowbit.bitnet:perplexity_command", gguf=gguf, text=text, ctx=int(ctx),
         chunks=int(chunks) if chunks else None, max_ppl=float(max_ppl) if max_ppl else None)


@task(
    help={
        "rounds": "interleaved rounds (medians are reported)",
        "reduced": "a reduced shape instead of the full 2B4T shape (quick look)",
    }
)
def bitnet_bench(c, rounds=4, reduced=False):
    """Speed and memory of the 2B4T shape: TQ2_0/TQ1_0 vs Q4_0, 1 and 2 threads, roofline."""
    _kit(c, "lowbit.bitnet_bench:bench_command", rounds=int(rounds), reduced=reduced)
