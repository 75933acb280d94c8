"""The Jupyter kernel `lowbit`: the kit's interpreter, registered inside its own environment.

`invoke setup` calls `register_kernel()`; the notebook runner and `invoke lab` use the kernel by name,
so nobody has to activate the environment. `invoke setup --user-kernel` also registers it for the user
(`ipykernel install --user`: Jupyter's data dir, `JUPYTER_DATA_DIR` honoured), where a JupyterLab,
Notebook or VS Code installed outside the kit finds it. Checking the in-environment kernel is a file
read (standard library only); the user location and the search order come from jupyter_core/jupyter_client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lowbit import LowbitError
from lowbit.ui import warn

KERNEL_NAME = "lowbit"
DISPLAY_NAME = "Python (lowbit)"


def kernel_dir(prefix: str | Path | None = None) -> Path:
    """Where `ipykernel install --sys-prefix --name lowbit` puts the kernel spec."""
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME


def user_kernel_dir() -> Path:
    """Where `ipykernel install --user` puts the kernel spec (Jupyter's per-user data dir)."""
    # Imported here: jupyter_core comes with the notebook extras, and this module stays importable without them.
    from jupyter_core.paths import jupyter_data_dir  # optional (the `notebooks` extra): imported on use

    return Path(jupyter_data_dir()) / "kernels" / KERNEL_NAME


def kernel_python(spec_dir: Path) -> str | None:
    """The interpreter a kernel spec runs (argv[0] of its kernel.json), or None if unreadable."""
    try:
        argv = json.loads((spec_dir / "kernel.json").read_text())["argv"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(argv[0]) if isinstance(argv, list) and argv else None


def kernel_registered(python: str | None = None, user: bool = False) -> bool:
    """True when the `lowbit` kernel spec exists in this environment (or for the user) and runs `python`."""
    found = kernel_python(user_kernel_dir() if user else kernel_dir())
    return found is not None and Path(found) == Path(python or sys.executable)


def kernel_locations() -> list[dict]:
    """Every `lowbit` kernel spec Jupyter can see, in its search order: dir, python, and which one it uses."""
    # jupyter_client is a notebook extra; its KernelSpecManager is the search order every Jupyter front end uses.
    from jupyter_client.kernelspec import KernelSpecManager  # optional (the `notebooks` extra): imported on use

    ksm = KernelSpecManager()
    used = ksm.find_kernel_specs().get(KERNEL_NAME)
    found = []
    for base in ksm.kernel_dirs:
        spec_dir = Path(base) / KERNEL_NAME
        if (spec_dir / "kernel.json").is_file():
            found.append({"dir": str(spec_dir), "python": kernel_python(spec_dir),
                          "used": used is not None and Path(used) == spec_dir})
    return found


def register_kernel(force: bool = False, user: bool = False) -> int:
    """Register the `lowbit` kernel for this interpreter (`--sys-prefix`, or `--user`); a no-op when there."""
    if kernel_registered(user=user) and not force:
        return 0
    if user and (other := kernel_python(user_kernel_dir())):
        warn(f"the user kernel {KERNEL_NAME!r} ran {other}; it now runs {sys.executable} (this checkout)")
    cmd = [
        sys.executable,
        "-m",
        "ipykernel",
        "install",
        "--user" if user else "--sys-prefix",
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
    if not kernel_registered(user=user):
        where = user_kernel_dir() if user else kernel_dir()
        raise LowbitError(
            f"ipykernel reported success but {where / 'kernel.json'} does not run "
            f"{sys.executable}; is {'the Jupyter data dir' if user else 'sys.prefix'} writable?"
        )
    return 0
