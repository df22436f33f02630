"""`luodi schedule --calendar FILE.ics`: requests in words against a local calendar; each change is
shown before it is written (--yes applies without asking)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from luodi.cli.options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, ModelOpt
from luodi.cli.terminal import user_lines
from luodi.errors import InvalidParameterError, LuodiError

err = Console(stderr=True)


def schedule(
    calendar: Annotated[Path, typer.Option("--calendar", "-c", help="The iCalendar (.ics) file to read and change.")],
    request: Annotated[str | None, typer.Option(
        "--ask", "-a", help="One request; without it each stdin line is one (interactive on a terminal).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply changes without asking.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per request.")] = False,
    now: Annotated[str | None, typer.Option(
        "--now", help="The current time as ISO 8601 (default: the clock), for 'tomorrow', 'Tuesday'.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Ask about or change your calendar in words: 'move Tuesday's review to Thursday 3pm', '明天上午有什么安排'."""
    from luodi.apps.calendar_file import CalendarFile
    from luodi.apps.schedule import ScheduleAssistant
    from luodi.cli.generate import load_llm

    clock = _parse_now(now)
    CalendarFile(calendar)  # a bad file is an error before the model loads
    assistant = ScheduleAssistant(load_llm(model, device, dtype), CalendarFile(calendar), clock)
    for text in ([request] if request is not None else user_lines("schedule> ")):
        if not text.strip():
            continue
        assistant.calendar = CalendarFile(calendar)  # read afresh: an earlier request may have changed it
        try:
            _handle(assistant, text.strip(), yes, as_json)
        except LuodiError as exc:
            if request is not None:
                raise
            err.print(f"[red]{escape(str(exc))}[/red]")


def _handle(assistant, text: str, yes: bool, as_json: bool) -> None:
    result = assistant.handle(text)
    applied = False
    if result.changes and (yes or _confirm(result)):
        assistant.calendar.apply(result.changes)
        applied = True
    if as_json:
        print(json.dumps({**result.to_dict(), "applied": applied}, ensure_ascii=False), flush=True)
    elif not result.changes:
        print(result.answer, flush=True)
    else:
        print(f"{'applied' if applied else 'not applied'}: {result.answer}", flush=True)


def _confirm(result) -> bool:
    """Show the planned changes and ask; a non-interactive run applies nothing without --yes."""
    for change in result.changes:
        err.print(f"[bold]{escape(change.describe())}[/bold]")
    if not sys.stdin.isatty():
        err.print("[yellow]not applied: run with --yes to apply changes without asking[/yellow]")
        return False
    return typer.confirm("Apply?", default=False)


def _parse_now(now: str | None) -> datetime:
    if now is None:
        return datetime.now()
    try:
        return datetime.fromisoformat(now)
    except ValueError as exc:
        raise InvalidParameterError(f"--now {now!r} is not an ISO 8601 time; e.g. 2026-12-07T09:00", "now") from exc

