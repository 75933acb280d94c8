"""First half of `invoke setup`, run by whatever Python carries invoke (standard library only).

It picks the kit's environment (an activated conda env, else `.venv`), creates the venv if needed, installs
lowbit with its extras from requirements.lock when pyproject.toml or the lock changed, records the interpreter
for tasks.py, then hands over to `lowbit.setup.finish:finish` inside that environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lowbit import LowbitError
from lowbit.paths import active_conda_env, kit_root, state_dir, venv_dir, venv_python

EXTRAS = "replicas,notebooks,dev,checks"
LOCK_FILE = "requirements.lock"  # exact versions + hashes of pyproject.toml with EXTRAS (`invoke lock`)
LOCK_TAG_PREFIX = "# lowbit lock for: "  # the lock's first line: the interpreter and platform it was made for
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # where PyTorch publishes its +cpu wheels
_TAG_CODE = ("import platform, sys; v = sys.version_info; "
             "print(f'{sys.implementation.name}-{v[0]}.{v[1]}-{sys.platform}-{platform.machine()}')")


def choose_environment() -> tuple[Path, str]:
    """(interpreter, description) of the environment the kit uses."""
    if "LOWBIT_PYTHON" in os.environ:
        return Path(os.environ["LOWBIT_PYTHON"]), "LOWBIT_PYTHON"
    conda = active_conda_env()
    if conda is not None:
        return venv_python(conda), f"conda env {os.environ.get('CONDA_DEFAULT_ENV')} ({conda})"
    return venv_python(venv_dir()), f"virtual environment {venv_dir()}"


def create_venv(venv: Path) -> None:
    try:
        import ensurepip  # noqa: F401
        import venv as _venv  # noqa: F401  (Debian ships venv separately)
    except ImportError as exc:
        major, minor = sys.version_info[:2]
        raise LowbitError(
            f"this Python ({sys.executable}) cannot create virtual environments: {exc}.\n"
            f"Fix: `sudo apt install python{major}.{minor}-venv` (Debian/Ubuntu), then run `invoke setup` again."
        ) from exc
    print(f"> creating virtual environment {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)


def lock_tag(python: Path | None = None) -> str:
    """Interpreter and platform a lock made with `python` holds wheels for, e.g. cpython-3.11-linux-x86_64."""
    return subprocess.run([str(python or sys.executable), "-c", _TAG_CODE], capture_output=True, text=True,
                          check=True).stdout.strip()


def locked_for(lock: Path) -> str | None:
    """The tag on a lock's first line (None: no lock, or one without a tag)."""
    if not lock.is_file():
        return None
    first = lock.read_text().partition("\n")[0]
    return first.removeprefix(LOCK_TAG_PREFIX).strip() if first.startswith(LOCK_TAG_PREFIX) else None


def install_fingerprint() -> str:
    """Changes whenever what setup installs could change (pyproject.toml, the lock, the extras)."""
    lock = kit_root() / LOCK_FILE
    data = (kit_root() / "pyproject.toml").read_bytes() + (lock.read_bytes() if lock.exists() else b"")
    return hashlib.sha256(data + EXTRAS.encode()).hexdigest()[:16]


def install_commands(python: Path) -> list[list[str]]:
    """The pip commands that install lowbit and its dependencies: the lock's exact, hash-checked versions where
    the lock was made for this interpreter and platform, else pyproject.toml's ranges."""
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    tag, made_for = lock_tag(python), locked_for(kit_root() / LOCK_FILE)
    if tag == made_for:
        # Then lowbit itself (hash checking cannot take an editable install), built by the locked setuptools.
        return [[*pip, "--require-hashes", "--no-deps", "-r", LOCK_FILE],
                [*pip, "--no-deps", "--no-build-isolation", "-e", "."]]
    print(f"> warning: {LOCK_FILE} was made for {made_for or 'nothing (missing or untagged)'}, this environment "
          f"is {tag}: installing from pyproject.toml's version ranges instead of exact, hash-checked versions. "
          f"`invoke lock` afterwards writes a lock for this machine.", flush=True)
    return [[*pip, "-e", f".[{EXTRAS}]"]]


def install_package(python: Path) -> bool:
    """Install lowbit and its dependencies into the kit env unless already done for this pyproject.toml + lock."""
    stamp = state_dir() / "installed"
    fingerprint = f"{install_fingerprint()} {python}"
    if stamp.exists() and stamp.read_text().strip() == fingerprint:
        return False
    print(f"> installing lowbit[{EXTRAS}] and its dependencies into {python.parent.parent}", flush=True)
    # torch is pinned (+cpu in the lock) so the CPU wheel pip is configured to find is used, never CUDA's.
    for cmd in install_commands(python):
        proc = subprocess.run(cmd, cwd=kit_root())
        if proc.returncode != 0:
            hint = (f"\nIf pip found no torch==...+cpu: {LOCK_FILE} pins PyTorch's CPU build, which PyPI does not "
                    f"carry; add its index and run setup again: `PIP_EXTRA_INDEX_URL={TORCH_CPU_INDEX} invoke "
                    f"setup`." if LOCK_FILE in cmd else "")
            raise LowbitError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); see the pip output above{hint}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return True


def setup(backend: str = "auto", source: str = "sdist", cuda_arch: str | None = None, force: bool = False,
          no_replicas: bool = False, user_kernel: bool = False, no_real_models: bool = False) -> int:
    """`invoke setup`: the environment, the packages and the llama.cpp build, then `finish` inside the env."""
    started = time.monotonic()
    python, where = choose_environment()
    if not python.exists():
        if "conda" in where or "LOWBIT_PYTHON" in where:
            raise LowbitError(f"{where} has no interpreter at {python}")
        create_venv(venv_dir())
    print(f"> environment: {where}", flush=True)
    # The build needs only the standard library: compile llama.cpp while pip installs the packages.
    build_args = {"backend": backend, "source": source, "cuda_arch": cuda_arch, "force": force}
    build = subprocess.Popen([str(python), "-m", "lowbit", "lowbit.toolchain.build:build_llama_command",
                              json.dumps(build_args)], cwd=kit_root())
    try:
        install_package(python)
    except BaseException:
        build.terminate()
        build.wait()
        raise
    if build.wait() != 0:
        return build.returncode
    state_dir().mkdir(parents=True, exist_ok=True)
    (state_dir() / "python").write_text(str(python) + "\n")
    finish_args = {**build_args, "force": False,  # built just now
                   "replicas": not no_replicas, "user_kernel": user_kernel, "real_models": not no_real_models,
                   "started": time.time() - (time.monotonic() - started), "environment": where}
    return subprocess.run([str(python), "-m", "lowbit", "lowbit.setup.finish:finish", json.dumps(finish_args)],
                          cwd=kit_root()).returncode
