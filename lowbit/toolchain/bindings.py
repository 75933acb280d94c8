"""Python bindings (llama-cpp-python) bound to the kit's own llama.cpp build.

llama-cpp-python is installed from the same sdist the build came from, with its own llama.cpp build
switched off, and its `llama_cpp/lib/` folder is filled with links to our build's shared libraries:
llama_cpp loads its library at import from that folder (or LLAMA_CPP_LIB_PATH), so a bare
`import llama_cpp` then uses our build with no environment variable set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from lowbit import LowbitError
from lowbit.toolchain.build import LLAMA_CPP_PYTHON_VERSION, Build, fetch_sdist

STAMP = "lowbit-build.json"


def package_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    return Path(spec.origin).parent if spec and spec.origin else None


def installed_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:
        return None


def bound_build_key() -> str | None:
    """The key of the build the installed bindings are linked to, if any."""
    pkg = package_dir()
    stamp = pkg / "lib" / STAMP if pkg else None
    if stamp and stamp.exists():
        return json.loads(stamp.read_text()).get("key")
    return None


def install_bindings(build: Build) -> bool:
    """Install llama-cpp-python (no native build) and link it to `build`. Returns True if work was done."""
    if installed_version() == LLAMA_CPP_PYTHON_VERSION and bound_build_key() == build.key:
        return False
    if installed_version() != LLAMA_CPP_PYTHON_VERSION:
        print(f"> installing llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (Python bindings, no native build)",
              flush=True)
        env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-cache-dir",
               str(fetch_sdist())]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LowbitError(f"installing llama-cpp-python failed:\n{proc.stderr[-2000:]}")
        importlib.invalidate_caches()
    link_libraries(build)
    return True


def link_libraries(build: Build) -> Path:
    """Point llama_cpp/lib/ at the build's shared libraries (replacing whatever was there)."""
    pkg = package_dir()
    if pkg is None:
        raise LowbitError("llama_cpp is not installed in this environment: run `invoke setup`")
    lib = pkg / "lib"
    lib.mkdir(exist_ok=True)
    for old in lib.iterdir():
        if old.is_symlink() or old.name == STAMP or old.suffix in (".so", ".dylib", ".dll") or ".so." in old.name:
            old.unlink()
    libraries = build.libraries()
    if not any(p.name.startswith("libllama.") for p in libraries):
        raise LowbitError(f"no libllama in {build.bin_dir}; rebuild with `invoke build-llama --force`")
    for src in libraries:
        (lib / src.name).symlink_to(src)
    (lib / STAMP).write_text(json.dumps({"key": build.key, "directory": build.directory}))
    return lib


def loaded_library() -> Path:
    """The shared library `import llama_cpp` actually loaded (resolved), for checks and `doctor`."""
    import llama_cpp.llama_cpp as ll  # the bindings: installed by setup against the kit's build, loaded on use

    return Path(os.path.realpath(ll._lib._name))
