"""Terminal output shared by every command: tables that never wrap when piped, steps, progress.

Steps and warnings go through `logging.getLogger("lowbit")`: used as a library, lowbit prints nothing
of its own accord (configure logging to see its INFO steps; warnings reach stderr through Python's
last-resort handler). The command line (`python -m lowbit`, hence every invoke/`lowbit` task) calls
`console_logging()`, which shows them on stderr at the level `LOWBIT_LOG_LEVEL` names (`lowbit -v`
sets DEBUG, `lowbit -q` WARNING: quiet output also hides progress bars).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

log = logging.getLogger("lowbit")
LOG_LEVEL_ENV = "LOWBIT_LOG_LEVEL"

# Piped output (CI logs, `| less`) gets a very wide console, so tables are never wrapped or cut. In a notebook
# kernel (rich's own detection) tables are plain text on the cell's stdout, not rich's HTML plus an ANSI-coloured
# copy (Jupyter sets FORCE_COLOR): stored lessons stay small, diffable and readable wherever they are shown.
# err_console keeps rich's notebook mode, so a long download or merge shows a live progress bar in JupyterLab.
_PLAIN = {"force_jupyter": False, "force_terminal": False, "color_system": None} if Console().is_jupyter else {}
console = Console(width=None if sys.stdout.isatty() else 400, highlight=False, soft_wrap=True, **_PLAIN)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 400)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A rich table with `columns`; every cell is shown in full (no ellipsis, no folding)."""
    t = Table(title=title, title_justify="left", show_lines=False)
    for col in columns:
        t.add_column(col, overflow="fold" if sys.stdout.isatty() else "ignore", no_wrap=not sys.stdout.isatty())
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    console.print(table(title, columns, rows))


def print_json(data: object, indent: int = 1) -> None:
    """`data` as JSON on stdout: what every `--json` flag prints."""
    sys.stdout.write(json.dumps(data, indent=indent) + "\n")


def step(message: str) -> None:
    """One line announcing a unit of work (INFO; on the command line: stderr, so --json stdout stays clean)."""
    log.info(message)


def warn(message: str) -> None:
    """Something the user should know (WARNING)."""
    log.warning(message)


class ConsoleHandler(logging.Handler):
    """lowbit's records as the command line shows them on stderr: `> step`, `warning: ...`."""

    STYLES = {logging.DEBUG: ("  ", "dim"), logging.INFO: ("> ", "bold cyan"),
              logging.WARNING: ("warning: ", "bold yellow"), logging.ERROR: ("error: ", "bold red")}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = max(k for k in self.STYLES if k <= max(record.levelno, logging.DEBUG))
            prefix, style = self.STYLES[level]
            # Text, not markup: a message holding "[...]" (a path, a flag list) is printed as is.
            err_console.print(Text.assemble((prefix, style), record.getMessage()))
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


def env_log_level() -> int:
    """The level `LOWBIT_LOG_LEVEL` names (DEBUG, INFO, WARNING, ERROR or a number); INFO by default."""
    value = os.environ.get(LOG_LEVEL_ENV, "").strip().upper()
    if value.isdigit():
        return int(value)
    level = logging.getLevelName(value) if value else logging.INFO
    return level if isinstance(level, int) else logging.INFO


def console_logging(level: int | None = None) -> None:
    """Show lowbit's log records on stderr (command-line use); idempotent."""
    if not any(isinstance(h, ConsoleHandler) for h in log.handlers):
        log.addHandler(ConsoleHandler())
    log.setLevel(env_log_level() if level is None else level)
    log.propagate = False


def quiet() -> bool:
    """True when the user asked for quiet output (`lowbit -q`, LOWBIT_LOG_LEVEL=WARNING or above)."""
    return env_log_level() > logging.INFO


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
