"""`python -m lowbit MODULE:FUNCTION [JSON-KWARGS]`: how tasks.py calls the package.

tasks.py parses the command line (invoke, or the `lowbit` command over the same tasks) and hands the
keyword arguments over as JSON, so flags are declared once; secret ones (a token) come as JSON in the
environment variable LOWBIT_SECRET_KWARGS instead, so they never show in the process list. A
LowbitError becomes its message on stderr and exit status 2; Ctrl-C exits 130.
SIGTERM and SIGHUP count as Ctrl-C, and the process ends when its parent (invoke) dies, so every
command's Ctrl-C cleanup (stop llama-server, workers, Jupyter) runs whichever way it is stopped.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

from lowbit import LowbitError, procs

SECRET_KWARGS_ENV = "LOWBIT_SECRET_KWARGS"  # JSON keyword arguments that must not appear in `ps`


def _console_logging() -> None:
    """lowbit's log records on stderr. Bootstrap runs some modules before rich is installed: plain text then."""
    try:
        from lowbit.ui import console_logging
    except ImportError:
        logging.basicConfig(format="> %(message)s", level=logging.INFO)
        return
    console_logging()


def main(argv: list[str]) -> int:
    if not argv or ":" not in argv[0]:
        print("usage: python -m lowbit lowbit.MODULE:FUNCTION ['{\"kwarg\": value}']", file=sys.stderr)
        return 2
    module_name, func_name = argv[0].split(":", 1)
    if not module_name.startswith("lowbit."):
        print(f"lowbit: refusing to run {module_name!r}: only lowbit modules", file=sys.stderr)
        return 2
    kwargs = json.loads(argv[1]) if len(argv) > 1 else {}
    # Secrets (a token) come through the environment, not the command line every local user can read.
    secrets = os.environ.pop(SECRET_KWARGS_ENV, None)
    if secrets:
        kwargs.update(json.loads(secrets))
    _console_logging()
    logging.getLogger("lowbit").debug(f"running {module_name}:{func_name} in {sys.executable}")
    try:
        with procs.interrupt_on_signals():
            procs.die_with_parent()
            func = getattr(importlib.import_module(module_name), func_name)
            result = func(**kwargs)
    except LowbitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
