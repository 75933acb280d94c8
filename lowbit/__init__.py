"""lowbit: run huge LLMs on small machines with extreme low-bit GGUF quants.

Importing this package must stay cheap and use only the standard library: `invoke setup`
runs parts of it with whatever Python carries invoke, before any dependency is installed.
"""

__version__ = "0.1.0"


class LowbitError(Exception):
    """A failure the user can act on: the message says what was wrong and what to do."""


def flag_number(flag: str, value, kind: type = int, minimum: float | None = None):
    """A command-line value (invoke hands over text when a flag's default is None) as `kind`, or None when
    absent; anything else is a LowbitError naming the flag, never a ValueError traceback."""
    if value is None or value == "":
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise LowbitError(f"--{flag.replace('_', '-')} {value!r}: give {what}") from None
    if minimum is not None and number < minimum:
        raise LowbitError(f"--{flag.replace('_', '-')} {value!r}: must be at least {minimum}")
    return number
