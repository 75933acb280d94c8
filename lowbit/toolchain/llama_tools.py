"""llama.cpp's own tools, run one way: convert_hf_to_gguf.py, llama-quantize, llama-imatrix, llama-bench.

Every run goes through `procs.run_checked` (no stdin, output captured, a failure names the tool, its exit
status and the output's tail). `quantize` writes to a temporary name and renames only a good result, and
holds the one check of llama-quantize's silent fallback (rows that are not whole blocks of the asked type
are stored in another type, and the tool still exits 0).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from lowbit import LowbitError, ui
from lowbit.procs import run_checked
from lowbit.toolchain.build import Build, active_build, sdist_tree

FALLBACK_RE = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


def default_threads() -> int:
    """Threads for the kit's own conversions: all cores, at most 4 (more gains nothing on tiny models)."""
    return max(1, min(4, os.cpu_count() or 1))


def converter_script() -> Path:
    """convert_hf_to_gguf.py of the pristine llama.cpp tree in the pinned sdist."""
    return sdist_tree() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"


def convert_hf_to_gguf(hf: Path, out: Path, outtype: str = "bf16", metadata: Path | None = None,
                       script: Path | None = None, env: dict[str, str] | None = None) -> Path:
    """Run convert_hf_to_gguf.py (`script`, default the pinned tree's) with this interpreter."""
    extra = ["--metadata", str(metadata)] if metadata else []
    run_checked([sys.executable, str(script or converter_script()), str(hf), "--outfile", str(out),
                 "--outtype", outtype, *extra], "convert_hf_to_gguf.py", env=env)
    return out


def check_fallback(log: str, what: str, allow: bool = False) -> None:
    """Refuse llama-quantize output in which some tensors fell back to another type (warn if `allow`)."""
    fallback = FALLBACK_RE.search(log)
    if fallback is None:
        return
    if allow:
        ui.warn(f"{what}: {fallback.group(0)} (rows not a multiple of the type's block)")
        return
    lines = "\n".join(line for line in log.splitlines() if "falling back" in line or "fallback" in line)
    raise LowbitError(f"{what}: {fallback.group(0)} — choose a type that fits every tensor's rows "
                      f"(widths must be multiples of the type's block, 256 for IQ/K quants):\n{lines}")


def quantize(src: Path, dst: Path, base_type: str, imatrix: Path | None = None,
             tensor_type_file: Path | None = None, allow_requantize: bool = False,
             allow_fallback: bool = False, threads: int | None = None, build: Build | None = None) -> Path:
    """llama-quantize `src` to `dst` (written under a temporary name, renamed when good) with an optional
    imatrix and per-tensor types; a fallback quantization is an error unless `allow_fallback`."""
    tool = (build or active_build()).tool("llama-quantize")
    tmp = dst.with_name(dst.name + ".part")
    cmd = [str(tool)] + (["--allow-requantize"] if allow_requantize else [])
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    if tensor_type_file is not None:
        cmd += ["--tensor-type-file", str(tensor_type_file)]
    cmd += [str(src), str(tmp), base_type, str(threads or default_threads())]
    try:
        log = run_checked(cmd, f"llama-quantize {base_type}")
        check_fallback(log, f"llama-quantize {base_type}", allow_fallback)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def imatrix(model: Path, text: Path, out: Path, ctx: int = 128, chunks: int | None = None,
            threads: int | None = None) -> Path:
    """llama-imatrix over `text` (all of it, or the first `chunks` contexts of `ctx` tokens)."""
    extra = ["--chunks", str(chunks)] if chunks else []
    run_checked([str(active_build().tool("llama-imatrix")), "-m", str(model), "-f", str(text), "-o", str(out),
                 "-c", str(ctx), *extra, "-t", str(threads or default_threads()), "--no-ppl"], "llama-imatrix")
    if not out.exists():
        raise LowbitError(f"llama-imatrix wrote no {out.name}")
    return out



def run_tool(cmd: list[str], timeout: float, hint: str = "") -> subprocess.CompletedProcess:
    """Run a llama.cpp tool to completion (no stdin; output captured as text, undecodable bytes replaced: the
    tools print token pieces). A timeout or a non-zero exit is a LowbitError naming the tool and the command, with
    the last lines of its log (`hint` ends the timeout message)."""
    name = Path(cmd[0]).name
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LowbitError(f"{name} did not finish in {timeout:g} s{hint}: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        raise LowbitError(f"{name} exited with {proc.returncode}:\n{tail}\ncommand: {' '.join(cmd)}")
    return proc


def llama_bench(model: Path, args: list[str], timeout: float = 1800, hint: str = "",
                tool: Path | None = None) -> tuple[list[dict], list[str]]:
    """Run `llama-bench -m model ARGS -o json` once (`tool`: another build's llama-bench, default the active
    one's); return (its JSON rows, the command). A timeout or a failure is a LowbitError naming the command
    (`hint` ends the timeout message)."""
    cmd = [str(tool or active_build().tool("llama-bench")), "-m", str(model), *args, "-o", "json"]
    out = run_tool(cmd, timeout, hint).stdout  # the JSON array; skip anything a build prints around it
    return json.loads(out[out.index("[") : out.rindex("]") + 1]), cmd
