"""Build llama.cpp for this machine's backend, cached per (commit, backend, flags, patches).

The default source is the llama.cpp tree vendored in the PyPI sdist of the pinned llama-cpp-python:
PyPI is the only network it needs, and the CLI tools and the Python bindings are then the same
llama.cpp. Standard library only (plus rich for progress when it is installed), because the
bootstrap in `lowbit.setup.finish` may run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

try:
    import fcntl
except ImportError:  # Windows: builds are not locked
    fcntl = None  # type: ignore[assignment]

from lowbit import LowbitError
from lowbit.machine import cpu_fingerprint, gpu_names
from lowbit.paths import cache_dir, kit_root, state_dir

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
LLAMA_CPP_GIT_URL = "https://github.com/ggml-org/llama.cpp"

BACKENDS = ("auto", "cpu", "cuda", "metal", "vulkan")
SOURCES = ("sdist", "git", "PATH (a local llama.cpp checkout)")
# At this commit the RPC worker's target and binary are called ggml-rpc-server.
TARGETS = (
    "llama-cli", "llama-completion", "llama-server", "llama-gguf-split", "llama-quantize",
    "llama-imatrix", "llama-perplexity", "llama-bench", "ggml-rpc-server",
    "llama-tokenize",  # vocabulary-only tokenization (no model load) for the template lessons
    "llama-fit-params",  # llama.cpp's own memory projection and -ngl/-ot fit, beside the planner's
)
STAMP = "lowbit-build.json"
MIN_FREE_DISK = {"cpu": 3e9, "metal": 3e9, "vulkan": 4e9, "cuda": 8e9}


class BuiltTools:
    """Where a cached build's tools are: `directory/bin`; a missing tool names the command that rebuilds it."""

    directory: str
    REBUILD: ClassVar[str] = "invoke build-llama --force"
    WHAT: ClassVar[str] = "the build"

    @property
    def bin_dir(self) -> Path:
        return Path(self.directory) / "bin"

    def tool(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.exists():
            raise LowbitError(f"{name} is missing from {self.WHAT} at {self.bin_dir}; run `{self.REBUILD}`")
        return path


@dataclass
class Build(BuiltTools):
    """A finished build: where its binaries and shared libraries are."""

    key: str
    backend: str
    commit: str
    source: str
    flags: list[str]
    patches: list[str]
    directory: str
    seconds: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    fresh: bool = False  # True only on the object returned right after compiling

    def libraries(self) -> list[Path]:
        suffix = ".dylib" if sys.platform == "darwin" else ".so"
        return sorted(p for p in self.bin_dir.iterdir() if p.name.startswith("lib") and suffix in p.name)


# ---------------------------------------------------------------------------------------------
# source


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def sdist_path() -> Path:
    return cache_dir() / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"


def fetch_sdist() -> Path:
    """Download the pinned llama-cpp-python sdist with pip, checked against its sha256."""
    target = sdist_path()
    if target.exists() and _sha256(target) == LLAMA_CPP_PYTHON_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _progress_note(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sources (77 MB) from PyPI")
    tmp = target.parent / "download.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    req = tmp / "requirements.txt"
    req.write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} --hash=sha256:{LLAMA_CPP_PYTHON_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "-d", str(tmp), "-r", str(req)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = tmp / target.name
    if not got.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise LowbitError(
            f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} from PyPI:\n{proc.stderr[-1500:]}\n"
            "Check the network (PyPI must be reachable), or build a local checkout: "
            "`invoke build-llama --source PATH`."
        )
    os.replace(got, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sdist_tree() -> Path:
    """The extracted sdist (the Python bindings' source); llama.cpp is under vendor/llama.cpp."""
    root = cache_dir() / "src" / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"
    if (root / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        return root
    tarball = fetch_sdist()
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    (inner,) = list(tmp.iterdir())
    shutil.rmtree(root, ignore_errors=True)
    os.replace(inner, root)
    shutil.rmtree(tmp, ignore_errors=True)
    return root


def llama_source(source: str = "sdist") -> tuple[Path, str]:
    """Resolve `source` to (pristine llama.cpp tree, commit)."""
    if source == "sdist":
        return sdist_tree() / "vendor" / "llama.cpp", LLAMA_CPP_COMMIT
    if source == "git":
        dest = cache_dir() / "src" / f"llama.cpp-{LLAMA_CPP_COMMIT[:12]}"
        if not (dest / "CMakeLists.txt").exists():
            if not shutil.which("git"):
                raise LowbitError("--source git needs git: install it (e.g. `apt install git`) or use --source sdist")
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _run(["git", "init", "-q", str(tmp)])
                _run(["git", "-C", str(tmp), "fetch", "-q", "--depth", "1", LLAMA_CPP_GIT_URL, LLAMA_CPP_COMMIT])
                _run(["git", "-C", str(tmp), "checkout", "-q", "FETCH_HEAD"])
            except subprocess.CalledProcessError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise LowbitError(
                    f"git could not fetch {LLAMA_CPP_GIT_URL} at {LLAMA_CPP_COMMIT}: {exc}. "
                    "Is GitHub reachable? The default `--source sdist` needs only PyPI."
                ) from exc
            os.replace(tmp, dest)
        return dest, LLAMA_CPP_COMMIT
    path = Path(source).expanduser().resolve()
    if not (path / "CMakeLists.txt").exists() or not (path / "include" / "llama.h").exists():
        raise LowbitError(
            f"--source {source!r} is not a llama.cpp checkout (no CMakeLists.txt and include/llama.h). "
            f"Choices: {', '.join(SOURCES)}."
        )
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "local-" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return path, commit


def patch_files() -> list[Path]:
    """The kit's llama.cpp patch series, applied in name order."""
    return sorted((kit_root() / "patches").glob("*.patch"))


def patched_source(pristine: Path, commit: str) -> Path:
    """A copy of `pristine` with the patch series applied (or `pristine` itself if there is none)."""
    patches = patch_files()
    if not patches:
        return pristine
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in patches)).hexdigest()[:12]
    dest = cache_dir() / "src" / f"llama.cpp-{commit[:12]}-patched-{digest}"
    if (dest / ".lowbit-patched").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pristine, tmp, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    for patch in patches:
        proc = subprocess.run(["git", "apply", "--verbose", str(patch)], cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LowbitError(
                f"patch {patch.name} no longer applies to llama.cpp {commit[:12]}:\n{proc.stderr.strip()}\n"
                "Refresh the patch against this commit (or drop it if upstream has the change)."
            )
    (tmp / ".lowbit-patched").write_text("\n".join(p.name for p in patches) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# backend and flags


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise LowbitError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if gpu_names():
        return "cuda"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal"
    return "cpu"


def find_nvcc() -> Path | None:
    for cand in (shutil.which("nvcc"), os.environ.get("CUDACXX"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return Path(cand)
    return None


def cmake_flags(backend: str, cuda_arch: str | None, cuda_root: Path | None) -> list[str]:
    """CMake flags right for this llama.cpp: shared libs, relocatable RPATH, no network at build time."""
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        # $ORIGIN RPATH: binaries and libraries find each other wherever the build dir ends up.
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        "-DCMAKE_INSTALL_RPATH=" + ("@loader_path" if sys.platform == "darwin" else "$ORIGIN"),
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=ON",
        # The server's web UI would otherwise be fetched from the Hub at build time.
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DGGML_RPC=ON",
        "-DLLAMA_OPENSSL=" + ("ON" if openssl_headers() else "OFF"),
    ]
    if backend == "cpu":
        flags += ["-DGGML_NATIVE=ON", "-DGGML_METAL=OFF"]
    elif backend == "metal":
        flags += ["-DGGML_METAL=ON"]
    elif backend == "vulkan":
        flags += ["-DGGML_VULKAN=ON", "-DGGML_NATIVE=ON"]
    elif backend == "cuda":
        flags += ["-DGGML_CUDA=ON", "-DGGML_NATIVE=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
        if cuda_root is not None:
            flags += [f"-DCUDAToolkit_ROOT={cuda_root}", f"-DCMAKE_CUDA_COMPILER={cuda_root / 'bin' / 'nvcc'}",
                      # libggml-cuda needs libcublas.so.N, which may live only in the toolkit root of links:
                      # the RPATH lets the linker (for the tools) and the loader (at run time) find it.
                      f"-DCMAKE_INSTALL_RPATH=$ORIGIN;{cuda_root / 'lib64'}"]
        if not _has_libcuda():
            # No driver library (a machine with nvcc but no GPU driver): VMM needs libcuda at link time.
            flags += ["-DGGML_CUDA_NO_VMM=ON"]
    return flags


def openssl_headers() -> bool:
    if shutil.which("pkg-config"):
        if subprocess.run(["pkg-config", "--exists", "openssl"], capture_output=True).returncode == 0:
            return True
    return any(Path(p, "openssl", "ssl.h").exists() for p in ("/usr/include", "/usr/local/include",
                                                               "/opt/homebrew/include"))


def _has_libcuda() -> bool:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "libcuda.so" in out


# ---------------------------------------------------------------------------------------------
# CUDA toolkit without cuBLAS


def cuda_toolkit_root(nvcc: Path) -> Path:
    """A CUDA toolkit root that has cuBLAS: the system one, or one made of links plus PyPI's cuBLAS.

    Some CUDA installs ship nvcc and cudart but not cuBLAS (`Unable to find cublas_v2.h`). PyPI's
    `nvidia-cublas` wheel ships the headers and libraries; a root of symlinks (system toolkit +
    the wheel's include/lib) lets CMake's FindCUDAToolkit see one complete toolkit.
    """
    system_root = _system_toolkit_root(nvcc)
    if _find_cublas(system_root):
        return system_root
    version = _nvcc_major(nvcc)
    wheel_dir = cache_dir() / "cuda" / f"cublas-cu{version}"
    if not (wheel_dir / ".complete").exists():
        _progress_note(f"cuBLAS is missing from {system_root}; fetching nvidia-cublas (CUDA {version}) from PyPI")
        spec = "nvidia-cublas" if version >= 13 else f"nvidia-cublas-cu{version}"
        shutil.rmtree(wheel_dir, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(wheel_dir),
                               f"{spec}<{version + 1}" if version >= 13 else spec],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LowbitError(f"could not install {spec} from PyPI to provide cuBLAS:\n{proc.stderr[-1500:]}")
        (wheel_dir / ".complete").touch()
    cublas = next((p.parent.parent for p in wheel_dir.rglob("cublas_v2.h")), None)
    if cublas is None:
        raise LowbitError(f"the nvidia-cublas wheel in {wheel_dir} has no cublas_v2.h; delete that folder and retry")
    return _linked_toolkit(system_root, cublas, cache_dir() / "cuda" / f"toolkit-cu{version}")


def _linked_toolkit(system_root: Path, cublas: Path, root: Path) -> Path:
    """A toolkit root of links: the system toolkit with cuBLAS's include/lib merged in.

    nvcc finds its profile next to the path it was called by and sets TOP to that folder's parent,
    so `bin/` must be a real folder of links (a linked folder would resolve back to the system
    toolkit); nvcc also reads `targets/<arch>/include|lib`, which therefore point at the merged ones.
    """
    shutil.rmtree(root, ignore_errors=True)
    merged = {"bin": [system_root / "bin"],
              "include": [system_root / "include", cublas / "include"],
              "lib64": [system_root / ("lib64" if (system_root / "lib64").exists() else "lib"), cublas / "lib"]}
    for name, sources in merged.items():
        (root / name).mkdir(parents=True)
        for src_dir in sources:
            for entry in src_dir.iterdir():
                link = root / name / entry.name
                if not link.exists() and not link.is_symlink():
                    link.symlink_to(entry.resolve())
    for entry in system_root.iterdir():
        if entry.name not in (*merged, "lib", "targets"):
            (root / entry.name).symlink_to(entry.resolve())
    (root / "lib").symlink_to("lib64")
    for target in (system_root / "targets").glob("*"):
        (root / "targets" / target.name).mkdir(parents=True)
        for entry in target.iterdir():
            link = root / "targets" / target.name / entry.name
            if entry.name == "include":
                link.symlink_to(root / "include")
            elif entry.name in ("lib", "lib64"):
                link.symlink_to(root / "lib64")
            else:
                link.symlink_to(entry.resolve())
    # The wheel ships libcublas.so.N only; the linker wants the unversioned name.
    for lib in ("libcublas", "libcublasLt"):
        versioned = sorted((root / "lib64").glob(f"{lib}.so.*"))
        if versioned and not (root / "lib64" / f"{lib}.so").exists():
            (root / "lib64" / f"{lib}.so").symlink_to(versioned[0].resolve())
    return root


def _system_toolkit_root(nvcc: Path) -> Path:
    """The real toolkit folder (nvcc on PATH may be a wrapper script elsewhere)."""
    candidates = [nvcc.resolve().parent.parent, *(Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH")
                                                  if v in os.environ), Path("/usr/local/cuda"), Path("/opt/cuda")]
    for cand in candidates:
        if (cand / "bin" / "nvcc").exists() and (cand / "include" / "cuda_runtime.h").exists():
            return cand.resolve()
    raise LowbitError(f"cannot find the CUDA toolkit that {nvcc} belongs to: set CUDA_HOME to its folder")


def _find_cublas(root: Path) -> bool:
    return any((root / d / "cublas_v2.h").exists() for d in ("include", "targets/x86_64-linux/include"))


def _nvcc_major(nvcc: Path) -> int:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.", out)
    if not m:
        raise LowbitError(f"cannot read the CUDA version from `{nvcc} --version`")
    return int(m.group(1))


# ---------------------------------------------------------------------------------------------
# preflight, build, cache


def preflight(backend: str, build_root: Path) -> Path | None:
    """Check tools and disk before any long work; return nvcc for cuda."""
    problems = []
    if not shutil.which("cmake"):
        problems.append("CMake is not installed: `apt install cmake` / `brew install cmake` / `pip install cmake`")
    cc = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if not cc or not shutil.which(cc):
        problems.append("no C++ compiler: `apt install build-essential` / `xcode-select --install`")
    nvcc = None
    if backend == "cuda":
        nvcc = find_nvcc()
        if nvcc is None:
            problems.append("backend cuda needs nvcc (the CUDA toolkit): install it from "
                            "https://developer.nvidia.com/cuda-downloads or use --backend cpu")
    if backend == "vulkan" and not shutil.which("glslc"):
        problems.append("backend vulkan needs glslc and the Vulkan headers: `apt install glslc libvulkan-dev`")
    if backend == "metal" and sys.platform != "darwin":
        problems.append("backend metal exists only on macOS")
    build_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(build_root).free
    if free < MIN_FREE_DISK[backend]:
        problems.append(f"only {free / 1e9:.1f} GB free in {build_root}; a {backend} build needs "
                        f"{MIN_FREE_DISK[backend] / 1e9:.0f} GB (free space or set LOWBIT_CACHE)")
    if problems:
        raise LowbitError("cannot build llama.cpp:\n  - " + "\n  - ".join(problems))
    return nvcc


def build_key(commit: str, backend: str, flags: list[str], patches: list[Path]) -> str:
    h = hashlib.sha256()
    for part in (commit, backend, *flags, *(p.read_bytes().hex() for p in patches)):
        h.update(part.encode() + b"\0")
    if backend in ("cpu", "vulkan", "cuda"):
        h.update(cpu_fingerprint().encode())
    return f"{commit[:12]}-{backend}-{h.hexdigest()[:12]}"


def builds_root() -> Path:
    return cache_dir() / "builds"


def load_build(directory: Path) -> Build | None:
    stamp = directory / STAMP
    if not stamp.exists():
        return None
    return Build(**json.loads(stamp.read_text()))


def active_build() -> Build:
    """The build this checkout uses (set by `invoke build-llama` / `invoke setup`)."""
    state = state_dir() / "build.json"
    if state.exists():
        build = load_build(Path(json.loads(state.read_text())["directory"]))
        if build is not None:
            return build
    raise LowbitError("llama.cpp is not built for this checkout yet: run `invoke setup` (or `invoke build-llama`)")


def _activate(build: Build) -> None:
    state_dir().mkdir(parents=True, exist_ok=True)
    tmp = state_dir() / "build.json.tmp"
    tmp.write_text(json.dumps({"directory": build.directory, "key": build.key}, indent=1))
    os.replace(tmp, state_dir() / "build.json")


def build_llama(backend: str = "auto", source: str = "sdist", cuda_arch: str | None = None,
                force: bool = False, jobs: int | None = None) -> Build:
    """Build (or reuse) llama.cpp and make it this checkout's active build."""
    backend = resolve_backend(backend)
    root = builds_root()
    nvcc = preflight(backend, root)
    cuda_root = None
    if backend == "cuda":
        if not cuda_arch:
            if not gpu_names():
                raise LowbitError("no GPU here to detect the CUDA architecture: pass --cuda-arch "
                                  "(e.g. 90 for H100, 89 for RTX 40xx, 86 for RTX 30xx)")
            cuda_arch = "native"
        cuda_root = cuda_toolkit_root(nvcc)
    pristine, commit = llama_source(source)
    src = patched_source(pristine, commit)
    flags = cmake_flags(backend, cuda_arch, cuda_root)
    key = build_key(commit, backend, flags, patch_files())
    final = root / key
    existing = load_build(final)
    if existing is not None and not force:
        if all((existing.bin_dir / t).exists() for t in TARGETS):
            _activate(existing)
            return existing
        existing = None  # a kit update added targets: build just those, in place (incremental)

    # A first build of this key compiles in place, resuming an interrupted attempt (same key = same
    # flags, so ninja/make pick up where they stopped). A forced rebuild compiles beside the good build.
    previous = ""
    try:
        previous = f" The previous build stays active: {active_build().directory}."
    except LowbitError:
        pass

    def describe(directory: Path, seconds: float) -> dict:
        return asdict(Build(key=key, backend=backend, commit=commit, source=source, flags=flags,
                            patches=[p.name for p in patch_files()], directory=str(directory), seconds=seconds))

    log_path = cache_dir() / "logs" / f"build-{key}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    data, fresh = cached_cmake_build(
        src, final, flags, TARGETS, what="llama.cpp", title=f"llama.cpp ({backend})",
        header=f"# llama.cpp {commit} backend={backend} source={source}\n", log_path=log_path, stamp=STAMP,
        describe=describe, jobs=jobs, in_place=existing is None, force=force, failure_hint=previous)
    build = Build(**data)
    _activate(build)
    build.fresh = fresh
    return build


@contextmanager
def build_lock(final: Path) -> Iterator[None]:
    """Hold the lock for building into `final`: a second build of the same key waits for the first."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{final.name}.lock", "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _progress_note(f"another process is building {final.name}; waiting for it")
                fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _stamped(final: Path, stamp: str, targets: Sequence[str]) -> dict | None:
    """The stamp of a complete build in `final` (every target present), else None."""
    try:
        data = json.loads((final / stamp).read_text())
    except (OSError, ValueError):
        return None
    return data if all((final / "bin" / t).exists() for t in targets) else None


def cached_cmake_build(src: Path, final: Path, flags: list[str], targets: Sequence[str], *, what: str, title: str,
                       header: str, log_path: Path, stamp: str, describe: Callable[[Path, float], dict],
                       env: dict[str, str] | None = None, jobs: int | None = None, in_place: bool = False,
                       force: bool = False, scratch_suffix: str = ".new", failure_hint: str = "") -> tuple[dict, bool]:
    """CMake-configure `src` and build `targets` into the keyed cache folder `final`, under a lock.

    `in_place` compiles in `final` itself (a first build resumes an interrupted one; an update tops up
    missing targets); otherwise in `final` + `scratch_suffix`, renamed over `final` only when complete, so
    a failure leaves the previous build intact. `describe(final, seconds)` gives the stamp's content (it may
    check the result and raise); the stamp is written last and marks the build complete. Returns (stamp,
    True), or (stamp, False) when a complete build of `final` already existed (e.g. made while this one
    waited for the lock) and `force` is off."""
    with build_lock(final):
        if not force and (done := _stamped(final, stamp, targets)) is not None:
            return done, False
        work = final if in_place else final.with_name(final.name + scratch_suffix)
        if work != final:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        configure = ["cmake", "-S", str(src), "-B", str(work), *generator, *flags]
        compile_ = ["cmake", "--build", str(work), "--config", "Release", "-j", str(jobs or os.cpu_count() or 2),
                    "--target", *targets]
        started = time.monotonic()
        try:
            with open(log_path, "w") as log:
                log.write(header)
                run_logged(configure, log, f"configuring {title}", env=env)
                run_logged(compile_, log, f"compiling {title} ({', '.join(targets)})", env=env)
            missing = [t for t in targets if not (work / "bin" / t).exists()]
            if missing:
                raise LowbitError(f"the {what} build finished but {', '.join(missing)} are missing from bin/; "
                                  f"full log: {log_path}")
        except BaseException as exc:
            if work != final:
                shutil.rmtree(work, ignore_errors=True)
            if isinstance(exc, subprocess.CalledProcessError):
                tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
                raise LowbitError(f"the {what} build failed ({exc.cmd[0]} {exc.cmd[1]} ..., exit {exc.returncode})."
                                  f"{failure_hint}\nLast lines of the log:\n{tail}\nFull log: {log_path}") from exc
            raise
        if work != final:
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(work, final)
            shutil.rmtree(old, ignore_errors=True)
            # CMake caches absolute paths (the scratch folder); keep incremental rebuilds working after the move.
            (final / "CMakeCache.txt").unlink(missing_ok=True)
        data = describe(final, round(time.monotonic() - started, 1))
        shutil.copy(log_path, final / "build.log")
        tmp = final / f"{stamp}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, final / stamp)  # written last: marks the build complete
        return data, True


def _progress_note(message: str) -> None:
    print(f"> {message}", file=sys.stderr, flush=True)


_NINJA = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)")
_MAKE = re.compile(r"^\[\s*(\d+)%\]\s*(.*)")


_GIT = re.compile(r"^(?:remote: )?([A-Z][\w ]+?):\s+(\d+)% \((\d+)/(\d+)\)")


def run_logged(cmd: list[str], log, title: str, cwd: Path | None = None, env: dict | None = None) -> None:
    """Run `cmd`, copy all output to `log`, show progress (git's percentages, ninja/make steps)."""
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL)
    progress = _Progress(title)
    pending = b""
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for raw in lines:
                line = raw.decode(errors="replace")
                if not line:
                    continue
                log.write(line + "\n")
                if m := _GIT.match(line):
                    progress.update(int(m.group(3)), max(int(m.group(4)), 1), m.group(1))
                elif m := _NINJA.match(line):
                    progress.update(int(m.group(1)), int(m.group(2)), m.group(3))
                elif m := _MAKE.match(line):
                    progress.update(int(m.group(1)), 100, m.group(2))
        if pending:
            log.write(pending.decode(errors="replace") + "\n")
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    finally:
        progress.close()
        log.flush()
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)


class _Progress:
    """A rich progress bar on a terminal; a line every 10 % otherwise (CI logs stay short)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.last_decile = -1
        self.started = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                    TextColumn("{task.fields[item]}"), transient=False)
                self.bar.start()
                self.task = self.bar.add_task(title, total=None, item="")
            except ImportError:
                self.bar = None
        if self.bar is None:
            _progress_note(title)

    def update(self, done: int, total: int, item: str) -> None:
        item = item.rsplit("/", 1)[-1][:60]
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, item=item)
            return
        decile = done * 10 // max(total, 1)
        if decile != self.last_decile:
            self.last_decile = decile
            print(f"  {self.title}: {done}/{total} ({decile * 10}%) {time.monotonic() - self.started:.0f}s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def build_llama_command(backend: str = "auto", source: str = "sdist", cuda_arch: str | None = None,
                        force: bool = False) -> int:
    """`invoke build-llama`: build, then print what was built."""
    build = build_llama(backend=backend, source=source, cuda_arch=cuda_arch, force=force)
    state = f"built in {build.seconds:.0f} s" if build.fresh else "cached"
    print(f"llama.cpp {build.commit[:12]} ({build.backend}, {state}) ready in {build.bin_dir}")
    return 0
