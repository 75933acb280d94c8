"""Where the kit keeps things: checkout, venv, caches, models, runs. Standard library only."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

KIT_ROOT = Path(__file__).resolve().parent.parent


def kit_root() -> Path:
    """The checkout that holds `tasks.py` and the `lowbit` package."""
    return KIT_ROOT


def state_dir() -> Path:
    """Per-checkout state (active build, setup stamps); ignored by git."""
    return Path(os.environ.get("LOWBIT_STATE", KIT_ROOT / ".lowbit"))


def cache_dir() -> Path:
    """User cache shared by checkouts: llama.cpp sources and builds."""
    if "LOWBIT_CACHE" in os.environ:
        return Path(os.environ["LOWBIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or (
        Path.home() / ("Library/Caches" if sys.platform == "darwin" else ".cache")
    )
    return Path(base) / "lowbit"


def models_dir() -> Path:
    """Where replicas and downloaded models live (`models/` in the checkout unless configured)."""
    return Path(os.environ.get("LOWBIT_MODELS", KIT_ROOT / "models"))


def runs_dir() -> Path:
    """Where notebook and benchmark runs write their results."""
    return Path(os.environ.get("LOWBIT_RUNS", KIT_ROOT / "runs"))


def venv_dir() -> Path:
    return Path(os.environ.get("LOWBIT_VENV", KIT_ROOT / ".venv"))


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def active_conda_env() -> Path | None:
    """An activated conda env other than `base` is used as the kit's environment, as is."""
    prefix = os.environ.get("CONDA_PREFIX")
    if prefix and os.environ.get("CONDA_DEFAULT_ENV", "base") != "base":
        return Path(prefix)
    return None


_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_RESERVED_TOP = {".cache"}  # where lowbit and huggingface_hub keep their own state inside a destination


def unsafe_repo_path(path: str) -> str | None:
    """Why a file path named by a server (a repo tree, a cache snapshot) must not be joined to a local folder;
    None when it is safe.

    Safe: relative, '/'-separated, no empty, '.' or '..' segment, no backslash, drive letter, NUL or control
    character, and not inside a destination's own `.cache/` state."""
    if not isinstance(path, str) or not path:
        return "empty path"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return "control character or NUL in the name"
    if "\\" in path:
        return "backslash in the name"
    if path.startswith("/") or _DRIVE_RE.match(path):
        return "absolute path"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "empty, '.' or '..' segment"
    if parts[0] in _RESERVED_TOP:
        return f"inside the destination's own {parts[0]}/ state folder"
    return None
