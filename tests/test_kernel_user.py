"""`invoke setup --user-kernel`: the `lowbit` kernel where any Jupyter finds it, and `doctor` says where it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lowbit.paths import kit_root
from lowbit.toolchain.jupyter_kernel import (
    KERNEL_NAME,
    kernel_dir,
    kernel_locations,
    kernel_registered,
    register_kernel,
)


def test_user_kernel_is_found_by_jupyter_and_shown_by_doctor(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    # A Jupyter installed outside the kit's venv searches the user's data dir before any environment's;
    # inside the venv jupyter_core prefers the venv. This makes the venv's tools search as the outside one does.
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    spec_dir = tmp_path / "data" / "kernels" / KERNEL_NAME
    assert not kernel_registered(user=True)
    assert register_kernel(user=True) == 0 and kernel_registered(user=True)
    assert json.loads((spec_dir / "kernel.json").read_text())["argv"][0] == sys.executable
    # A Jupyter of the user's (the `jupyter` command, as JupyterLab or VS Code would ask) finds it there.
    listed = subprocess.run([str(Path(sys.executable).parent / "jupyter"), "kernelspec", "list", "--json"],
                            capture_output=True, text=True, check=True)
    assert json.loads(listed.stdout)["kernelspecs"][KERNEL_NAME]["resource_dir"] == str(spec_dir)
    found = kernel_locations()
    assert found[0] == {"dir": str(spec_dir), "python": sys.executable, "used": True}
    if kernel_registered():  # the environment's own spec (invoke setup) is listed after it, shadowed
        assert {"dir": str(kernel_dir()), "python": sys.executable, "used": False} in found
    doctor = subprocess.run([sys.executable, "-m", "lowbit", "lowbit.setup.doctor:doctor_command",
                             '{"json": true}'], capture_output=True, text=True, cwd=kit_root(),
                            env=os.environ.copy())
    assert json.loads(doctor.stdout)["kernels"][0]["dir"] == str(spec_dir), doctor.stderr
    table = subprocess.run([sys.executable, "-m", "lowbit", "lowbit.setup.doctor:doctor_command"], capture_output=True,
                           text=True, cwd=kit_root(), env=os.environ.copy())
    assert str(spec_dir) in table.stdout and "jupyter kernel 'lowbit'" in table.stdout
