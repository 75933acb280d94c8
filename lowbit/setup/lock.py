"""`invoke lock`: requirements.lock, the exact versions and sha256 hashes of everything setup installs.

pip-tools' `pip-compile --generate-hashes` resolves pyproject.toml's dependencies with every extra setup installs,
through pip itself, so it sees the same package sources pip is configured with (pip.conf, PIP_* variables: a
local wheel folder or index, e.g. the CPU build of torch). Setup installs the lock with `--require-hashes`: two
workshops months apart get the same stack, and a file that changed on an index is refused. A lock holds one
platform's wheels: its first line names the interpreter and platform it was made for (`lock_tag`), and setup
falls back to pyproject.toml's ranges, with a warning, anywhere else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lowbit import LowbitError
from lowbit.paths import kit_root
from lowbit.setup.bootstrap import EXTRAS, LOCK_FILE, LOCK_TAG_PREFIX, lock_tag
from lowbit.ui import step


def compile_command(output: Path, upgrade: bool = False, package: list[str] | None = None) -> list[str]:
    """The pip-compile command line that writes `output` (which it reads first: pins stay unless upgraded)."""
    upgrades = ["--upgrade"] if upgrade else []
    for name in package or []:
        upgrades += ["--upgrade-package", name]
    return [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
            "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
            *(f"--extra={extra}" for extra in EXTRAS.split(",")), *upgrades, "--output-file", str(output),
            "pyproject.toml"]


def lock_command(upgrade: bool = False, package: list[str] | None = None) -> int:
    """`invoke lock`: bring requirements.lock in line with pyproject.toml (keeping pins unless asked to upgrade)."""
    root = kit_root()
    lock = root / LOCK_FILE
    with tempfile.TemporaryDirectory(prefix="lowbit-lock-") as tmp:
        draft = Path(tmp) / LOCK_FILE
        if lock.exists():
            body = [line for line in lock.read_text().splitlines(keepends=True)
                    if not line.startswith(LOCK_TAG_PREFIX)]
            draft.write_text("".join(body))  # pip-compile keeps the pins it finds there
        step(f"resolving pyproject.toml [{EXTRAS}] with hashes (pip-compile)")
        env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "invoke lock"}  # the header says how to remake the file
        proc = subprocess.run(compile_command(draft, upgrade, package), cwd=root, env=env)
        if proc.returncode != 0 or not draft.exists():
            raise LowbitError(f"pip-compile failed (exit {proc.returncode}); {LOCK_FILE} is unchanged")
        text = f"{LOCK_TAG_PREFIX}{lock_tag()}\n" + draft.read_text()
        new = root / f".{LOCK_FILE}.new"
        new.write_text(text)
        os.replace(new, lock)  # never a half-written lock
    pins = sum(1 for line in text.splitlines() if "==" in line and not line.startswith((" ", "#")))
    print(f"{LOCK_FILE}: {pins} packages pinned with hashes for {lock_tag()}")
    return 0
