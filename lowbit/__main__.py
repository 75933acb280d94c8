"""`python -m lowbit MODULE:FUNCTION [JSON-KWARGS]`: how tasks.py calls the package.

tasks.py parses the command line (invoke) and hands the keyword arguments over as JSON, so flags
are declared once. A LowbitError becomes its message on stderr and exit status 2; Ctrl-C exits 130.
SIGTERM and SIGHUP count as Ctrl-C, and the process ends when its parent (invoke) dies, so every
command's Ctrl-C cleanup (stop llama-server, workers, Jupyter) runs whichever way it is stopped.
"""

from __future__ import annotations

import importlib
import json
import sys

from lowbit import LowbitError, procs


def main(argv: list[str]) -> int:
    if not argv or ":" not in argv[0]:
        print("usage: python -m lowbit lowbit.MODULE:FUNCTION ['{\"kwarg\": value}']", file=sys.stderr)
        return 2
    module_name, func_name = argv[0].split(":", 1)
    if not module_name.startswith("lowbit."):
        print(f"lowbit: refusing to run {module_name!r}: only lowbit modules", file=sys.stderr)
        return 2
    kwargs = json.loads(argv[1]) if len(argv) > 1 else {}
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
