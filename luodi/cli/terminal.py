"""The user's turns for the interactive commands (chat, persona, support, schedule)."""

from __future__ import annotations

import sys
from collections.abc import Iterator


def user_lines(prompt: str = ">>> ") -> Iterator[str]:
    """Lines typed at `prompt` until end of input, or, when stdin is piped, each line of it (one turn a line)."""
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    while True:
        try:
            yield input(prompt)
        except EOFError:
            return
