"""Microsoft's bitnet.cpp as an optional BitNet engine: preflight, clone, build, convert, run.

bitnet.cpp (github.com/microsoft/BitNet) is a llama.cpp fork with its own ternary kernels (I2_S). lowbit
drives it exactly as its own `setup_env.py` does for `microsoft/BitNet-b1.58-2B-4T -q i2_s`: clone with
submodules at a pinned commit, generate the kernel header with its `utils/codegen_tl*.py`, configure with
CMake and clang >= 18, then convert with its `utils/preprocess-huggingface-bitnet.py` +
`utils/convert-ms-to-gguf-bitnet.py` + `llama-quantize ... I2_S 1` (the steps of its
`utils/convert-helper-bitnet.py`) and run its `llama-cli` / `llama-perplexity`. Differences, each for a
reason: the converters run on a scratch copy (convert-helper moves the user's model.safetensors aside and
swallows errors); the fork's gguf-py is put on PYTHONPATH for the converter instead of being pip-installed
into the kit's environment; only the tools lowbit runs are compiled, statically (the built tree is renamed
into the cache, so nothing may point back into the temporary build folder).

Standard library only at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from lowbit import LowbitError
from lowbit.bitnet.checkpoint import check_checkpoint
from lowbit.machine import cpu_fingerprint, free_disk
from lowbit.models.catalog import ANY_KIND, locate
from lowbit.paths import cache_dir
from lowbit.procs import run_checked
from lowbit.toolchain.build import BuiltTools, builds_root, cached_cmake_build, run_logged
from lowbit.ui import human_bytes, step

BITNET_CPP_GIT = "https://github.com/microsoft/BitNet"
# The pinned commit: microsoft/BitNet 01eb415 (2026-03-10), whose 3rdparty/llama.cpp submodule is
# Eddie-Wang1120/llama.cpp (branch merge-dev) at 1f86f058 (llama.cpp b3639 era). Its 2B4T GGUFs
# (`bitnet-b1.58` / `bitnet-25` architectures) run through `build_bitnet_158()`, which builds the FFN with
# LLM_FFN_RELU_SQR (ReLU², as 2B4T was trained). The next head, 0b341e5 (2026-07-27), re-ported BitNet onto
# upstream llama.cpp b9918 (isHuangXin/llama.cpp@390c307, src/models/bitnet.cpp) with a hard-coded
# LLM_FFN_SILU: wikitext-2 perplexity ~99.8 instead of ~17.1 (microsoft/BitNet#588, #602; PRs #603/#604
# still open). Several independent downstream projects record 01eb415 + 1f86f058 as the last good pair
# (one measured the same GGUF at PPL 9.5 on 01eb415 vs 58.2 on 0b341e5, transformers 3.74 on that text).
# Not established first-hand here (GitHub is unreachable from the machine this was written on): the
# e2e test (`tests/test_bitnet_cpp.py`) and `invoke bitnet-perplexity --engine bitnet.cpp` check it.
BITNET_CPP_COMMIT = "01eb415772c342d9f20dc42772f1583ae1e5b102"
LLAMA_FORK_COMMIT = "1f86f058de0c3f4098dedae2ae8653c335c868a1"
MIN_CLANG = 18
TARGETS = ("llama-cli", "llama-quantize", "llama-perplexity")
STAMP = "lowbit-bitnet-cpp.json"
SOURCE_MARK = ".lowbit-source.json"
MIN_FREE_DISK = 4e9  # clone with submodule (~0.5 GB) + build (~1 GB) + headroom

# setup_env.py: ARCH_ALIAS, COMPILER_EXTRA_ARGS and gen_code() for "BitNet-b1.58-2B-4T".
ARCH_ALIAS = {"AMD64": "x86_64", "x86": "x86_64", "x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64",
              "ARM64": "arm64"}
ARCH_FLAGS = {"x86_64": ["-DBITNET_X86_TL2=OFF"], "arm64": ["-DBITNET_ARM_TL1=OFF"]}
CODEGEN = {
    "x86_64": ["utils/codegen_tl2.py", "--model", "bitnet_b1_58-3B", "--BM", "160,320,320", "--BK", "96,96,96",
               "--bm", "32,32,32"],
    "arm64": ["utils/codegen_tl1.py", "--model", "bitnet_b1_58-3B", "--BM", "160,320,320", "--BK", "64,128,64",
              "--bm", "32,64,32"],
}
# One source fix, applied after checkout and checked: clang >= 18 rejects dropping `const` here
# ("cannot initialize a variable of type 'int8_t *' with an rvalue of type 'const int8_t *'"); reported
# with clang 18, 19 (Debian 13), 20 and Apple clang (microsoft/BitNet#509, #577; the one-line fix is
# PR #409/#577, not merged at the pinned commit). No behaviour change: y_col is only read.
CONST_FIX = ("src/ggml-bitnet-mad.cpp", re.compile(r"(?<!const )\bint8_t \* y_col = y \+ col \* by;"),
             "const int8_t * y_col = y + col * by;")


# ---------------------------------------------------------------------------------------------
# preflight


@dataclass(frozen=True)
class Clang:
    """A clang/clang++ pair and its major version."""

    cc: str
    cxx: str
    version: int
    banner: str  # first line of `clang --version`


def clang_version(exe: str) -> tuple[int, str] | None:
    """(major, first line) of `exe --version` if it is clang, else None."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, errors="replace", timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"clang version (\d+)\.", out)
    return (int(m.group(1)), out.splitlines()[0].strip()) if m else None


def find_clangs() -> list[Clang]:
    """Every clang on PATH (`clang`, `clang-NN`) with its version, newest first; clang++ may be missing ('')."""
    found: dict[str, Clang] = {}
    for name in ["clang", *(f"clang-{v}" for v in range(40, 10, -1))]:
        exe = shutil.which(name)
        if not exe or os.path.realpath(exe) in found:
            continue
        ver = clang_version(exe)
        if ver is None:
            continue
        cxx = shutil.which(name.replace("clang", "clang++", 1)) or ""
        found[os.path.realpath(exe)] = Clang(cc=exe, cxx=cxx, version=ver[0], banner=ver[1])
    return sorted(found.values(), key=lambda c: c.version, reverse=True)


def find_clang() -> Clang | None:
    """CC/CXX if they name clang >= 18, else the newest clang >= 18 with its clang++ on PATH, or None."""
    cc, cxx = (shutil.which(os.environ.get(v, "")) for v in ("CC", "CXX"))
    if cc and cxx and (ver := clang_version(cc)) and ver[0] >= MIN_CLANG:
        return Clang(cc=cc, cxx=cxx, version=ver[0], banner=ver[1])
    return next((c for c in find_clangs() if c.version >= MIN_CLANG and c.cxx), None)


def github_problem(timeout: float = 15.0) -> str | None:
    """Why github.com cannot be reached (None if it can): `git ls-remote` when git exists, else a socket."""
    git = shutil.which("git")
    if git:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        try:
            proc = subprocess.run([git, "ls-remote", "--exit-code", BITNET_CPP_GIT, "HEAD"], capture_output=True,
                                  text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"`git ls-remote {BITNET_CPP_GIT}` timed out after {timeout:.0f} s"
        if proc.returncode == 0:
            return None
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return f"`git ls-remote {BITNET_CPP_GIT}` failed: {last}"
    try:
        socket.create_connection(("github.com", 443), timeout=timeout).close()
    except OSError as exc:
        return f"github.com:443 is unreachable ({exc.__class__.__name__}: {exc})"
    return None


def machine_arch() -> str | None:
    return ARCH_ALIAS.get(platform.machine())


def preflight(need_source: bool = True, need_build: bool = True, timeout: float = 15.0) -> Clang | None:
    """Check everything building bitnet.cpp needs, before creating anything; one LowbitError lists all gaps.

    `need_source`: the pinned tree is not cached yet (git and GitHub needed). `need_build`: it is not built
    yet (clang >= 18 and CMake needed). Returns the clang to build with.
    """
    problems = []
    clang = None
    if machine_arch() is None:
        problems.append(f"bitnet.cpp supports x86_64 and arm64 only (this machine is {platform.machine()})")
    if need_build:
        clang = find_clang()
        if clang is None:
            seen = find_clangs()
            found = ", ".join(f"{Path(c.cc).name} {c.version}" + ("" if c.cxx else " (no clang++)") for c in seen)
            problems.append(
                f"bitnet.cpp needs clang >= {MIN_CLANG} with clang++ ({'found: ' + found if found else 'none found'}"
                "): install one, e.g. `sudo apt install clang-19` (Debian 12/13, Ubuntu 24.04), "
                "`sudo apt install clang-18` (Ubuntu 22.04 via https://apt.llvm.org), `brew install llvm` (macOS)")
        if not shutil.which("cmake"):
            problems.append("CMake is not installed: `apt install cmake` / `brew install cmake` / `pip install cmake`")
    if need_source:
        if not shutil.which("git"):
            problems.append("git is not installed (bitnet.cpp and its llama.cpp fork are cloned from GitHub): "
                            "`apt install git` / `brew install git`")
        why = github_problem(timeout)
        if why:
            problems.append(f"GitHub is unreachable — {why}. bitnet.cpp is built from {BITNET_CPP_GIT} (with "
                            "submodules) and needs network once; the kit's own llama.cpp engine (TQ2_0) needs none")
    if need_source or need_build:
        where = cache_dir()
        free = free_disk(where)
        if free < MIN_FREE_DISK:
            problems.append(f"only {free / 1e9:.1f} GB free under {where}; bitnet.cpp's clone and build need "
                            f"{MIN_FREE_DISK / 1e9:.0f} GB (free space or set LOWBIT_CACHE)")
    if problems:
        raise LowbitError("cannot use --engine bitnet.cpp:\n  - " + "\n  - ".join(problems))
    return clang


# ---------------------------------------------------------------------------------------------
# source: clone at the pinned commit, fix, codegen (cached per commit and architecture)


def source_dir() -> Path:
    return cache_dir() / "src" / f"bitnet.cpp-{BITNET_CPP_COMMIT[:12]}-{machine_arch()}"


def source_ready() -> bool:
    return (source_dir() / SOURCE_MARK).exists()


def _log_path(what: str) -> Path:
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"bitnet-cpp-{what}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def _tail(log_path: Path, n: int = 25) -> str:
    return "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-n:])


def prepare_source() -> Path:
    """The pinned bitnet.cpp tree with submodules, the const fix and the generated kernel header.

    Cloned into `<name>.tmp` and renamed when complete; a failure removes the partial clone and names its log.
    """
    dest = source_dir()
    if (dest / SOURCE_MARK).exists():
        return dest
    arch = machine_arch()
    if arch is None:
        raise LowbitError(f"bitnet.cpp supports x86_64 and arm64 only (this machine is {platform.machine()})")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log_path = _log_path("clone")
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    steps = [
        (["git", "init", "-q", str(tmp)], "git init"),
        (["git", "-C", str(tmp), "remote", "add", "origin", BITNET_CPP_GIT], "git remote add"),
        (["git", "-C", str(tmp), "fetch", "--depth", "1", "--progress", "origin", BITNET_CPP_COMMIT],
         f"fetching bitnet.cpp {BITNET_CPP_COMMIT[:12]}"),
        (["git", "-C", str(tmp), "checkout", "-q", "--detach", "FETCH_HEAD"], "git checkout"),
        (["git", "-C", str(tmp), "submodule", "update", "--init", "--recursive", "--depth", "1", "--progress"],
         "fetching its llama.cpp fork (submodule 3rdparty/llama.cpp)"),
    ]
    try:
        with open(log_path, "w") as log:
            log.write(f"# bitnet.cpp {BITNET_CPP_COMMIT} from {BITNET_CPP_GIT}\n")
            for cmd, title in steps:
                run_logged(cmd, log, title, env=env)
            head = _git_head(tmp)
            fork = _git_head(tmp / "3rdparty" / "llama.cpp")
            if head != BITNET_CPP_COMMIT or fork != LLAMA_FORK_COMMIT:
                raise LowbitError(
                    f"the clone is at bitnet.cpp {head} with llama.cpp fork {fork}; expected {BITNET_CPP_COMMIT} "
                    f"with {LLAMA_FORK_COMMIT}. Full log: {log_path}")
            fixed = apply_const_fix(tmp)
            log.write(f"# source fix: {fixed}\n")
            run_logged([sys.executable, *CODEGEN[arch]], log, "generating the kernel header (setup_env.py's codegen)",
                       cwd=tmp)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        hint = ""
        if "submodule" in exc.cmd:
            hint = (f"\nThe llama.cpp fork's commit {LLAMA_FORK_COMMIT[:12]} may have become unreachable "
                    "(force-pushed branch); report it with this log.")
        raise LowbitError(f"preparing bitnet.cpp failed at `{' '.join(exc.cmd[:4])} ...`. Last lines of the log:\n"
                          f"{_tail(log_path)}{hint}\nFull log: {log_path}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / SOURCE_MARK).write_text(json.dumps({"commit": BITNET_CPP_COMMIT, "llama_fork": LLAMA_FORK_COMMIT,
                                               "arch": arch, "codegen": CODEGEN[arch], "fix": fixed}, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _git_head(path: Path) -> str:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else f"(no commit: {proc.stderr.strip()[-200:]})"


def apply_const_fix(tree: Path) -> str:
    """Apply CONST_FIX to `tree`; say what was done. Fails loudly if the code it fixes is not there."""
    rel, pattern, replacement = CONST_FIX
    path = tree / rel
    text = path.read_text() if path.exists() else ""
    new, count = pattern.subn(replacement, text)
    if count:
        path.write_text(new)
        return f"{rel}: {count} x `{replacement}`"
    if replacement in text:
        return f"{rel}: already const-correct"
    raise LowbitError(f"{rel} in the bitnet.cpp tree does not contain the `y_col` line lowbit fixes for clang >= 18: "
                      "the pinned source changed; update CONST_FIX in lowbit/bitnet/engine.py")


# ---------------------------------------------------------------------------------------------
# build (cached per commit, compiler, flags and CPU)


@dataclass
class Engine(BuiltTools):
    """A finished bitnet.cpp build."""

    key: str
    commit: str
    llama_fork: str
    compiler: str
    flags: list[str]
    cpu: str
    directory: str
    version: str = ""  # `llama-cli --version`
    seconds: float = 0.0
    fresh: bool = False

    REBUILD: ClassVar[str] = "invoke bitnet-cpp-build --force"
    WHAT: ClassVar[str] = "the bitnet.cpp build"


def cmake_flags(clang: Clang, arch: str) -> list[str]:
    """setup_env.py's configure flags for 2B4T (i2_s) with the found clang, plus Release and static linking."""
    return [
        *ARCH_FLAGS[arch],
        f"-DCMAKE_C_COMPILER={clang.cc}",
        f"-DCMAKE_CXX_COMPILER={clang.cxx}",
        "-DCMAKE_BUILD_TYPE=Release",
        # Static tools: the finished build is renamed from its temporary folder, nothing may point back into it.
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=ON",  # llama-perplexity is an example at this llama.cpp
        "-DLLAMA_BUILD_SERVER=ON",
    ]


def build_key(flags: list[str], clang: Clang) -> str:
    h = hashlib.sha256()
    for part in (BITNET_CPP_COMMIT, LLAMA_FORK_COMMIT, clang.banner, *flags, *TARGETS, cpu_fingerprint()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def cached_engine() -> Engine | None:
    """The newest complete bitnet.cpp build of the pinned commit for this CPU, if any."""

    root = builds_root()
    if not root.is_dir():
        return None
    found = []
    for stamp in root.glob(f"bitnet.cpp-{BITNET_CPP_COMMIT[:12]}-*/{STAMP}"):
        try:
            engine = Engine(**json.loads(stamp.read_text()))
        except (ValueError, TypeError):
            continue
        if engine.cpu == cpu_fingerprint() and all((engine.bin_dir / t).exists() for t in TARGETS):
            found.append((stamp.stat().st_mtime, engine))
    return max(found, key=lambda x: x[0])[1] if found else None


def build_engine(force: bool = False, jobs: int | None = None) -> Engine:
    """Clone (if needed) and build bitnet.cpp at the pinned commit; reuse a cached build unless `force`."""

    if not force:
        cached = cached_engine()
        if cached is not None:
            return cached
    clang = preflight(need_source=not source_ready(), need_build=True)
    assert clang is not None
    arch = machine_arch()
    src = prepare_source()
    flags = cmake_flags(clang, arch)
    key = build_key(flags, clang)
    final = builds_root() / f"bitnet.cpp-{BITNET_CPP_COMMIT[:12]}-{key}"

    def describe(directory: Path, seconds: float) -> dict:
        """Check the moved tools still run (static linking: nothing points into the scratch folder)."""
        proc = subprocess.run([str(directory / "bin" / "llama-cli"), "--version"], capture_output=True, text=True,
                              errors="replace", stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise LowbitError(f"the built llama-cli does not run after moving it into the cache (exit "
                              f"{proc.returncode}):\n{(proc.stdout + proc.stderr)[-1500:]}\nbuild log: {log_path}")
        version = next(iter((proc.stdout + proc.stderr).strip().splitlines()), "")
        return asdict(Engine(key=key, commit=BITNET_CPP_COMMIT, llama_fork=LLAMA_FORK_COMMIT, compiler=clang.banner,
                             flags=flags, cpu=cpu_fingerprint(), directory=str(directory), version=version,
                             seconds=seconds))

    log_path = _log_path(f"build-{key}")
    data, fresh = cached_cmake_build(
        src, final, flags, TARGETS, what="bitnet.cpp", title=f"bitnet.cpp (clang {clang.version})",
        header=f"# bitnet.cpp {BITNET_CPP_COMMIT} (llama.cpp fork {LLAMA_FORK_COMMIT}) with {clang.banner}\n",
        log_path=log_path, stamp=STAMP, describe=describe, env={**os.environ, "CC": clang.cc, "CXX": clang.cxx},
        jobs=jobs, force=force, scratch_suffix=".tmp")
    engine = Engine(**data)
    engine.fresh = fresh
    return engine


# ---------------------------------------------------------------------------------------------
# conversion and running


def converter_env(tree: Path) -> dict[str, str]:
    """The converters import the fork's gguf-py (it knows I2_S and the bitnet architectures)."""
    gguf_py = str(tree / "3rdparty" / "llama.cpp" / "gguf-py")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["PYTHONPATH"] = os.pathsep.join([gguf_py, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def smoke_test(engine: Engine, gguf: Path, threads: int | None = None) -> None:
    """Load `gguf` with the engine's llama-cli and decode one token (proves the engine reads the file)."""
    generate(gguf, "Hello", n=1, threads=threads, ctx=128, engine=engine)


def convert(src: Path, out: Path | None = None, threads: int | None = None) -> Path:
    """An I2_S GGUF for bitnet.cpp from a 2B4T-layout HF checkpoint, or the `-gguf` repo's ggml-model-i2_s.gguf.

    HF checkpoints go through convert-helper-bitnet.py's steps on a scratch folder (the original stays
    untouched): ternarize the BitLinear weights (preprocess-huggingface-bitnet.py), convert to an f32 GGUF
    (convert-ms-to-gguf-bitnet.py --vocab-type bpe), quantize to I2_S single-threaded (`llama-quantize ... I2_S
    1`, as upstream; multi-threaded I2_S quantization misplaces the per-tensor scale), load-test, rename.
    """

    src = Path(src)
    ready = src if src.suffix == ".gguf" else src / "ggml-model-i2_s.gguf"
    if ready.is_file() and (src.suffix == ".gguf" or not (src / "config.json").exists()):
        engine = build_engine()
        step(f"{ready.name} is already an I2_S GGUF; checking that bitnet.cpp loads it")
        smoke_test(engine, ready, threads)
        return ready
    check_checkpoint(src)
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise LowbitError(f"{src} has no single model.safetensors: bitnet.cpp's converter (convert-helper-bitnet.py) "
                          "reads exactly that file (microsoft/bitnet-b1.58-2B-4T-bf16 ships one)")
    out = Path(out) if out else src / "ggml-model-i2_s.gguf"
    # preprocess writes the weights back as f32 (2x bf16), the f32 GGUF is as large again, I2_S ~1/4 of bf16
    need = 4.5 * weights.stat().st_size
    free = free_disk(out.parent)
    if free < need:
        raise LowbitError(f"converting {src.name} with bitnet.cpp's tools needs about {need / 1e9:.1f} GB free beside "
                          f"{out} (f32 intermediates), only {free / 1e9:.1f} GB are: free space or pass --out elsewhere"
                          )
    engine = build_engine()
    tree = source_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bitnet-cpp-convert-", dir=out.parent))
    try:
        for f in src.iterdir():  # config and tokenizer files beside the ternarized weights
            if f.is_file() and f.suffix in (".json", ".model", ".txt", ".jinja"):
                (work / f.name).symlink_to(f.resolve())
        step("ternarizing the BitLinear weights (bitnet.cpp's utils/preprocess-huggingface-bitnet.py)")
        run_checked([sys.executable, str(tree / "utils" / "preprocess-huggingface-bitnet.py"), "--input", str(weights),
                     "--output", str(work / "model.safetensors")], "preprocess-huggingface-bitnet.py")
        f32 = work / "ggml-model-f32.gguf"
        step("converting to an f32 GGUF (bitnet.cpp's utils/convert-ms-to-gguf-bitnet.py)")
        run_checked([sys.executable, str(tree / "utils" / "convert-ms-to-gguf-bitnet.py"), str(work),
                     "--vocab-type", "bpe", "--outtype", "f32", "--concurrency", "1", "--outfile", str(f32)],
                    "convert-ms-to-gguf-bitnet.py", env=converter_env(tree))
        tmp = work / out.name
        step("quantizing to I2_S with bitnet.cpp's llama-quantize (one thread, as upstream)")
        log = run_checked([str(engine.tool("llama-quantize")), str(f32), str(tmp), "I2_S", "1"],
                          "llama-quantize (I2_S)")
        if not re.search(r"converting to i2_s", log, flags=re.I):
            raise LowbitError(f"llama-quantize wrote no I2_S tensors:\n{log[-1500:]}")
        step("checking that bitnet.cpp loads the result")
        smoke_test(engine, tmp, threads)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def generate(gguf: Path, prompt: str, n: int = 64, threads: int | None = None, ctx: int = 2048,
             engine: Engine | None = None) -> str:
    """Greedy text from bitnet.cpp's llama-cli with run_inference.py's flags (-ngl 0, -b 1), temperature 0."""
    engine = engine or build_engine()
    cmd = [str(engine.tool("llama-cli")), "-m", str(gguf), "-p", prompt, "-n", str(n),
           "-t", str(threads or os.cpu_count() or 2), "-ngl", "0", "-c", str(ctx), "--temp", "0", "-b", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise LowbitError(f"bitnet.cpp's llama-cli failed on {gguf} (exit {proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr)[-2000:]}")
    return proc.stdout


def perplexity_tool() -> Path:
    return build_engine().tool("llama-perplexity")


# ---------------------------------------------------------------------------------------------
# commands


def build_command(force: bool = False) -> int:
    """`invoke bitnet-cpp-build`: clone and build bitnet.cpp at the pinned commit (cached)."""
    engine = build_engine(force=force)
    state = f"built in {engine.seconds:.0f} s" if engine.fresh else "cached"
    print(f"bitnet.cpp {engine.commit[:12]} (llama.cpp fork {engine.llama_fork[:8]}, {engine.compiler}; {state}) "
          f"ready in {engine.bin_dir}")
    return 0


def convert_command(src: str, out: str | None = None, quant: str | None = None) -> int:
    """`invoke bitnet-convert SRC --engine bitnet.cpp`: an I2_S GGUF that bitnet.cpp runs."""

    if quant not in (None, "i2_s", "I2_S"):
        raise LowbitError(f"--engine bitnet.cpp writes I2_S only (its x86/arm64 i2_s path); --quant {quant!r} "
                          "belongs to the llama.cpp engine (tq2_0, tq1_0)")
    if cached_engine() is None:  # say what is missing before fetching or building anything
        preflight(need_source=not source_ready(), need_build=True)
    path = locate(src, kind=ANY_KIND, obtain=True)
    result = convert(path, out=Path(out) if out else None)
    print(f"ready for bitnet.cpp: {result} ({human_bytes(result.stat().st_size)})")
    return 0


def generate_command(gguf: str, prompt: str, n: int = 64) -> int:
    """Print bitnet.cpp's completion of `prompt`."""
    print(generate(Path(gguf), prompt, n=n))
    return 0
