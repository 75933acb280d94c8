"""`invoke test`: ruff, deptry, import-linter's contracts, the pytest suite, and every notebook under nbval
(lax mode + sanitize file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lowbit.paths import kit_root

NO_TESTS = 5  # pytest's exit status when it collected nothing
# import-linter's `lint-imports` (the contracts in pyproject.toml), run by this interpreter whatever PATH says.
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def nbval_args(root: Path) -> list[str]:
    """pytest arguments that execute every notebook under `notebooks/` with nbval.

    Lax mode: every cell runs and a raising cell fails; outputs are compared only for cells marked
    `# NBVAL_CHECK_OUTPUT` (the lessons' deterministic checks), after the sanitize file's regexes.
    """
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    if not notebooks:
        return []
    args = ["--nbval-lax", "--nbval-cell-timeout=600", *(str(p.relative_to(root)) for p in notebooks)]
    sanitize = root / "notebooks" / "nbval-sanitize.cfg"
    if sanitize.exists():
        args += ["--nbval-sanitize-with", str(sanitize.relative_to(root))]
    return args


def run_tests(k: str | None = None, no_notebooks: bool = False, lint: bool = True) -> int:
    root = kit_root()
    if lint:
        print("> ruff check", flush=True)
        if subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=root).returncode:
            return 1
        print("> deptry .", flush=True)  # imports vs declared dependencies ([tool.deptry] in pyproject.toml)
        if subprocess.run([sys.executable, "-m", "deptry", "."], cwd=root).returncode:
            return 1
        print("> lint-imports", flush=True)
        if subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache"], cwd=root).returncode:
            return 1
    args = [sys.executable, "-m", "pytest", "tests", "-ra", "--durations=25"]
    if no_notebooks:  # the papermill pass in tests/test_notebooks.py too; pytest keeps only the last -k
        k = f"({k}) and not notebook" if k else "not notebook"
    elif not k:
        args += nbval_args(root)
    if k:
        args += ["-k", k]
    print("> " + " ".join(args[2:]), flush=True)
    code = subprocess.run(args, cwd=root).returncode
    if code == NO_TESTS:
        print("error: pytest collected no tests: nothing was checked", file=sys.stderr)
        return 1
    return code
