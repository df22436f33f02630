"""Progress on stderr for long library work: a bar over countable steps, a spinner otherwise.

Owns how progress looks (rich, on stderr, gone when done); callers decide whether to show it.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

_T = TypeVar("_T")


def track_if(items: Iterable[_T], description: str, enabled: bool, total: int | None = None) -> Iterable[_T]:
    """`items` as they are, or behind a progress bar when `enabled` (`total` for a bare iterator)."""
    if not enabled:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, total=total, description=description, console=Console(stderr=True), transient=True)


def status_if(description: str, enabled: bool) -> AbstractContextManager:
    """A spinner while a step without countable parts runs, when `enabled`."""
    if not enabled:
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(description)
