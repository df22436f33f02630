"""Progress on stderr for long library work: a live bar on a terminal, plain lines everywhere else.

Owns how progress looks, for every long command (loading, eval, quantize, pull, kb add,
finetune); callers decide whether to show it and say what they count. On a terminal it is a rich
bar (or a spinner) on stderr. Off a terminal (a pipe, a log file, CI, `nohup`) a live bar draws
nothing, so it is plain lines instead — "quantizing layers: 40/127 (31 %)" at the start, at each
further tenth of the work or after 10 s without a line, and at the end; never a line per step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TextIO, TypeVar

_T = TypeVar("_T")

PLAIN_STEPS = 10  # a plain line at each further tenth of a counted job ...
PLAIN_EVERY_S = 10.0  # ... or after this long without one (and for jobs of unknown size)

Advance = Callable[..., None]  # advance(n=1, description=None, **fields)


@contextmanager
def progress(
    description: str, total: float | None, *, enabled: bool = True, unit: str = "", detail: str = "",
    fields: dict[str, Any] | None = None, transient: bool = False, stream: TextIO | None = None,
) -> Iterator[Advance]:
    """Show progress over `total` steps (None: unknown); yields `advance(n=1, description=None, **fields)`.

    `unit` names what is counted ("layers"; "bytes" shows MiB). `detail` is a `str.format` template
    over `fields` shown beside the count ("loss {loss:.4f}"); `fields` are its first values.
    """
    if not enabled:
        yield _ignore
        return
    from rich.console import Console

    console = Console(stderr=True) if stream is None else Console(file=stream)
    if not console.is_terminal:
        plain = PlainProgress(description, total, unit=unit, detail=detail, fields=fields, stream=console.file)
        yield plain.advance
        plain.finish()
        return
    with _rich_progress(console, description, total, unit, detail, dict(fields or {}), transient) as advance:
        yield advance


def track_if(items: Iterable[_T], description: str, enabled: bool, total: int | None = None,
             unit: str = "") -> Iterable[_T]:
    """`items` as they are, or with progress shown as they are consumed, when `enabled`
    (`total` for a bare iterator)."""
    if not enabled:
        return items
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return _tracked(items, description, total, unit)


def _tracked(items: Iterable[_T], description: str, total: int | None, unit: str) -> Iterator[_T]:
    with progress(description, total, unit=unit, transient=True) as advance:
        for item in items:
            yield item
            advance()


def status_if(description: str, enabled: bool) -> AbstractContextManager:
    """A spinner while a step without countable parts runs (off a terminal: a line before and
    after), when `enabled`."""
    if not enabled:
        return nullcontext()
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        return console.status(description)
    return _plain_status(description, console.file)


@contextmanager
def _plain_status(description: str, stream: TextIO) -> Iterator[None]:
    start = time.monotonic()
    _print_line(stream, f"{description} …")
    yield
    _print_line(stream, f"{description}: done in {time.monotonic() - start:.1f} s")


class PlainProgress:
    """Progress as occasional plain lines on a stream that is not a terminal."""

    def __init__(self, description: str, total: float | None, *, unit: str = "", detail: str = "",
                 fields: dict[str, Any] | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.total, self.unit, self.detail = description, total, unit, detail
        self.fields = dict(fields or {})
        self._stream = stream or sys.stderr
        self._clock = clock
        self.done = 0.0
        self._start = self._last_at = clock()
        self._last_tenth = 0
        self._print()

    def advance(self, n: float = 1, description: str | None = None, **fields: Any) -> None:
        """Count `n` more steps; print a line if a tenth more is done or it has been a while."""
        del description  # the live bar's per-item caption: too busy for a log
        self.done += n
        self.fields.update(fields)
        now = self._clock()
        tenth = int(self.done * PLAIN_STEPS // self.total) if self.total else 0
        if self.total and self.done >= self.total:
            return  # `finish` says it, with the time taken
        if tenth > self._last_tenth or now - self._last_at >= PLAIN_EVERY_S:
            self._last_tenth = max(tenth, self._last_tenth)
            self._last_at = now
            self._print()

    def finish(self) -> None:
        self._print(f", done in {self._clock() - self._start:.1f} s")

    def line(self) -> str:
        """'quantizing layers: 40/127 layers (31 %) · loss 2.1' — the current state."""
        if self.unit == "bytes":
            count = f"{self.done / 2**20:.1f}" + (f"/{self.total / 2**20:.1f}" if self.total else "") + " MiB"
        else:
            count = f"{self.done:g}" + (f"/{self.total:g}" if self.total else "") + (f" {self.unit}" if self.unit else "")
        if self.total:
            count += f" ({100 * min(self.done / self.total, 1.0):.0f} %)"
        text = f"{self.description}: {count}"
        if self.detail:
            try:
                text += " · " + self.detail.format(**self.fields)
            except (KeyError, ValueError, TypeError):  # a field not reported yet, e.g. no loss before step 1
                pass
        return text

    def _print(self, suffix: str = "") -> None:
        _print_line(self._stream, self.line() + suffix)


def _print_line(stream: TextIO, text: str) -> None:
    print(text, file=stream, flush=True)


def _ignore(n: float = 1, description: str | None = None, **fields: Any) -> None:
    pass


@contextmanager
def _rich_progress(console: Any, description: str, total: float | None, unit: str, detail: str,
                   fields: dict[str, Any], transient: bool) -> Iterator[Advance]:
    from rich import progress as rp
    from rich.text import Text

    class DetailColumn(rp.ProgressColumn):
        def render(self, task: rp.Task) -> Text:
            try:
                return Text(detail.format(**task.fields))
            except (KeyError, ValueError, TypeError):
                return Text("")

    if unit == "bytes":
        counting: tuple[rp.ProgressColumn, ...] = (rp.DownloadColumn(), rp.TransferSpeedColumn(),
                                                   rp.TimeRemainingColumn())
    else:
        counting = (rp.MofNCompleteColumn(), *((rp.TextColumn(unit),) if unit else ()), rp.TimeElapsedColumn())
    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), *counting, *((DetailColumn(),) if detail else ()))
    with rp.Progress(*columns, console=console, transient=transient) as bar:
        task = bar.add_task(description, total=total, **fields)

        def advance(n: float = 1, description: str | None = None, **changed: Any) -> None:
            bar.update(task, advance=n, **({"description": description} if description else {}), **changed)

        yield advance


@contextmanager
def counter_if(description: str, enabled: bool, unit: str = "docs") -> Iterator[Callable[[int], None]]:
    """A running count with its rate (`unit`/s) for a stream of unknown length, when `enabled`;
    yields `count(n)`."""
    start, seen = time.monotonic(), 0
    with progress(description, None, enabled=enabled, unit=unit, detail="{rate}", fields={"rate": ""},
                  transient=True) as advance:

        def count(n: int) -> None:
            nonlocal seen
            seen += n
            advance(n, rate=f"{seen / max(time.monotonic() - start, 1e-9):,.0f} {unit}/s")

        yield count
