"""Progress on stderr for long library work: a bar over countable steps, a spinner otherwise,
a running count with its rate for streams.

Owns how progress looks (rich, on stderr, gone when done); callers decide whether to show it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
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


@contextmanager
def counter_if(description: str, enabled: bool, unit: str = "docs") -> Iterator[Callable[[int], None]]:
    """A running count with its rate (`unit`/s) while a long job runs, when `enabled`; yields
    `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task) -> Text:  # type: ignore[no-untyped-def]
            return Text(f"{task.completed:,.0f} {unit} · {task.speed or 0:,.0f} {unit}/s")

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), _Rate(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda n: progress.advance(task, n)
