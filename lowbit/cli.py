"""The `lowbit` command: the kit's tasks (tasks.py) under their own name, for people who do not use invoke.

It is invoke's own `Program` over the very task definitions `invoke` runs, so every task, flag and
help text is declared once, in tasks.py. tasks.py lives at the checkout's root, not in the package:
the package is installed editable from that checkout, so `lowbit.paths.kit_root()` finds it.
`lowbit TASK --help` shows the task's help (as `invoke --help TASK` does). Two options are added to
invoke's core ones: `-v` (lowbit's debug messages) and `-q` (warnings and errors
only, no progress bars), passed to the task processes as `LOWBIT_LOG_LEVEL`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from invoke import Argument, Collection, Program

from lowbit import LowbitError, __version__
from lowbit.paths import kit_root
from lowbit.ui import LOG_LEVEL_ENV


def load_tasks(root: Path | None = None) -> Collection:
    """The task collection of the checkout's tasks.py (the same one `invoke` loads)."""
    path = (root or kit_root()) / "tasks.py"
    if not path.is_file():
        raise LowbitError(
            f"the `lowbit` command runs the tasks in tasks.py of the checkout it was installed from, and "
            f"{path} is missing. Reinstall from a full checkout (`pip install -e .` there, or `invoke setup`)."
        )
    spec = importlib.util.spec_from_file_location("lowbit_kit_tasks", path)
    if spec is None or spec.loader is None:
        raise LowbitError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as importlib's recipe says: dataclasses look their module up there
    spec.loader.exec_module(module)
    return Collection.from_module(module)


class LowbitProgram(Program):
    """invoke's Program with `-v`/`-q` for lowbit's own output."""

    def core_args(self) -> list[Argument]:
        return [
            *super().core_args(),
            Argument(names=("verbose", "v"), kind=bool, default=False,
                     help=f"Show lowbit's debug messages too ({LOG_LEVEL_ENV}=DEBUG)."),
            Argument(names=("quiet", "q"), kind=bool, default=False,
                     help=f"Only warnings and errors, no progress bars ({LOG_LEVEL_ENV}=WARNING)."),
        ]

    def run(self, argv: list[str] | str | None = None, exit: bool = True) -> None:  # noqa: A002 (invoke's name)
        argv = sys.argv if argv is None else argv.split() if isinstance(argv, str) else argv
        super().run(_help_first(list(argv), self.namespace), exit)

    def execute(self) -> None:
        verbose, quiet = self.args.verbose.value, self.args.quiet.value
        if verbose and quiet:
            print("error: -v and -q contradict each other; pick one", file=sys.stderr)
            raise SystemExit(2)
        if verbose or quiet:
            os.environ[LOG_LEVEL_ENV] = "DEBUG" if verbose else "WARNING"  # the task processes inherit it
        super().execute()


def _help_first(argv: list[str], namespace: Collection) -> list[str]:
    """`lowbit TASK ... --help` -> `lowbit --help TASK`: invoke would take `--help` as the value of a task's
    positional argument (`invoke fetch --help` reports an unknown model named '--help')."""
    names = set(namespace.task_names) | {a for aliases in namespace.task_names.values() for a in aliases}
    for i, token in enumerate(argv[1:], start=1):
        if token in names:
            if "--help" in argv[i + 1:]:
                return [*argv[:i], "--help", token]
            break
    return argv


def program(root: Path | None = None) -> LowbitProgram:
    return LowbitProgram(namespace=load_tasks(root), name="lowbit", binary="lowbit", version=__version__)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `lowbit` console script."""
    try:
        prog = program()
    except LowbitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        prog.run(argv)
    except BrokenPipeError:  # `lowbit --help | head`: the reader left; not an error of ours
        sys.stderr.close()
        raise SystemExit(0) from None
