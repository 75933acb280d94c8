"""`invoke test`: ruff, the pytest suite, and every notebook under nbval."""

from __future__ import annotations

import subprocess
import sys

from lowbit.paths import kit_root


def run_tests(k: str | None = None, notebooks: bool = True, lint: bool = True) -> int:
    root = kit_root()
    if lint:
        print("> ruff check", flush=True)
        if subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=root).returncode:
            return 1
    args = [sys.executable, "-m", "pytest", "tests", "-ra"]
    if k:
        args += ["-k", k]
    nbs = sorted((root / "notebooks").glob("*.ipynb"))
    if notebooks and nbs and not k:
        sanitize = root / "notebooks" / "nbval-sanitize.cfg"
        args += ["--nbval-lax", *(str(p.relative_to(root)) for p in nbs)]
        if sanitize.exists():
            args += ["--nbval-sanitize-with", str(sanitize.relative_to(root))]
    print("> " + " ".join(args[2:]), flush=True)
    code = subprocess.run(args, cwd=root).returncode
    if code == 5:
        print("error: pytest collected no tests", file=sys.stderr)
    return code
