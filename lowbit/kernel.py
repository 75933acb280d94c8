"""The Jupyter kernel `lowbit`: the kit's interpreter, registered inside its own environment.

`invoke setup` calls `register_kernel()`; the notebook runner and `invoke lab` use the kernel by name,
so nobody has to activate the environment. Standard library only: checking is a file read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lowbit import LowbitError

KERNEL_NAME = "lowbit"
DISPLAY_NAME = "Python (lowbit)"


def kernel_dir(prefix: str | Path | None = None) -> Path:
    """Where `ipykernel install --sys-prefix --name lowbit` puts the kernel spec."""
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME


def kernel_registered(python: str | None = None) -> bool:
    """True when the `lowbit` kernel spec exists in this environment and runs `python` (default: this one)."""
    spec = kernel_dir() / "kernel.json"
    try:
        argv = json.loads(spec.read_text())["argv"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(argv) and Path(argv[0]) == Path(python or sys.executable)


def register_kernel(force: bool = False) -> int:
    """Register the `lowbit` kernel for this interpreter (`--sys-prefix`); a no-op when already there."""
    if kernel_registered() and not force:
        return 0
    cmd = [
        sys.executable,
        "-m",
        "ipykernel",
        "install",
        "--sys-prefix",
        "--name",
        KERNEL_NAME,
        "--display-name",
        DISPLAY_NAME,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise LowbitError(
            f"registering the Jupyter kernel failed ({' '.join(cmd)}): {proc.stderr.strip()[-500:]}; "
            "install the notebook extras (`pip install -e .[notebooks]`) and retry"
        )
    if not kernel_registered():
        raise LowbitError(
            f"ipykernel reported success but {kernel_dir() / 'kernel.json'} does not run "
            f"{sys.executable}; is sys.prefix writable?"
        )
    return 0
