"""Terminal output shared by every command: tables that never wrap when piped, steps, progress."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

# Piped output (CI logs, `| less`) gets a very wide console, so tables are never wrapped or cut.
console = Console(width=None if sys.stdout.isatty() else 400, highlight=False, soft_wrap=True)
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


def step(message: str) -> None:
    """One line announcing a unit of work (goes to stderr so --json stdout stays clean)."""
    err_console.print(f"[bold cyan]>[/] {message}")


def warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {message}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
