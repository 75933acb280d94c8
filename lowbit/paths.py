"""Where the kit keeps things: checkout, venv, caches, models, runs. Standard library only."""

from __future__ import annotations

import os
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
