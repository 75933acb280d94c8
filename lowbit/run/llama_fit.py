"""llama.cpp's own memory projection (`llama-fit-params`), to set beside the planner's prediction.

`llama-fit-params --fit-print on` loads only the model's metadata and prints, per device and for the host,
the model, context (KV) and compute buffer sizes llama.cpp would allocate for the given flags; without
`--fit-print` it prints the `-c/-ngl/-ot` arguments its fit chooses for the free device memory. Both are
llama.cpp's own answer to "does it fit", which the planner should agree with (or say why not: mmap'd weights
are counted in full by llama.cpp but are resident only once read; the compute buffer is reserved, not touched).
"""

from __future__ import annotations

import os
from pathlib import Path

from lowbit import LowbitError
from lowbit.toolchain.build import active_build
from lowbit.toolchain.llama_tools import run_tool

MIB = 2**20


def available() -> Path | None:
    """The active build's `llama-fit-params`, or None (an older build without it: `invoke build-llama`)."""
    try:
        tool = active_build().bin_dir / "llama-fit-params"
    except LowbitError:
        return None
    return tool if tool.exists() else None


def _run(args: list[str], timeout: float) -> str:
    tool = available()
    if tool is None:
        raise LowbitError("this llama.cpp build has no llama-fit-params: run `invoke build-llama` (it builds "
                          "only the missing tool)")
    return run_tool([str(tool), *args], timeout).stdout


def parse_print(stdout: str) -> dict[str, dict[str, int]]:
    """`--fit-print on` output (`NAME model context compute` in MiB, one line per device, then `Host`) as
    {device: {"model", "context", "compute"}} in bytes."""
    out: dict[str, dict[str, int]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            out[parts[0]] = {k: int(v) * MIB for k, v in zip(("model", "context", "compute"), parts[1:], strict=True)}
    if "Host" not in out:
        raise LowbitError(f"llama-fit-params printed no host memory line: {stdout.strip()[:200]!r}")
    return out


def projected(model: str | os.PathLike, n_ctx: int, extra: list[str] | None = None,
              timeout: float = 120) -> dict[str, dict[str, int]]:
    """llama.cpp's projected buffers for `model` at context `n_ctx` (and flags `extra`: -ngl, -ot, -ctk ...):
    {device or "Host": {"model", "context", "compute"}} in bytes."""
    return parse_print(_run(["-m", str(model), "-c", str(n_ctx), "--fit-print", "on", *(extra or [])], timeout))


def fitted_args(model: str | os.PathLike, n_ctx: int, extra: list[str] | None = None, timeout: float = 120) -> str:
    """The `-c ... -ngl ... [-ot ...]` llama.cpp's fit chooses for the free device memory (CPU only: all
    layers stay on the host)."""
    lines = [ln for ln in _run(["-m", str(model), "-c", str(n_ctx), *(extra or [])], timeout).splitlines()
             if ln.startswith("-c ")]
    if not lines:
        raise LowbitError("llama-fit-params printed no fitted arguments")
    return lines[-1].strip()
