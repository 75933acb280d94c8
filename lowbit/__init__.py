"""lowbit: run huge LLMs on small machines with extreme low-bit GGUF quants.

Importing this package must stay cheap and use only the standard library: `invoke setup`
runs parts of it with whatever Python carries invoke, before any dependency is installed.
"""

__version__ = "0.1.0"


class LowbitError(Exception):
    """A failure the user can act on: the message says what was wrong and what to do."""
