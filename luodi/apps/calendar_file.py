"""A local iCalendar (.ics) file: reading it strictly, its events, changes, and an atomic write.

Owns the file: a malformed file is a `CalendarError` naming the problem and is never written; a
change is written to a temporary file beside it and renamed over it, so the file is whole before
and after, never half-written. Events keep every property they had; a move changes only DTSTART
and DTEND (the duration kept, the time zone of the original start kept).

Must not know: requests, models, dates in words (`when`).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from luodi.errors import LuodiError

MAX_ICS_BYTES = 10 * 2**20


class CalendarError(LuodiError):
    """A calendar file that cannot be read or written, or a change that does not apply."""


def _icalendar() -> Any:
    try:
        import icalendar
    except ImportError as exc:
        raise CalendarError("the schedule assistant needs icalendar: pip install 'luodi[schedule]'") from exc
    return icalendar


@dataclass(frozen=True, slots=True)
class Event:
    uid: str
    title: str
    start: datetime
    end: datetime

    def describe(self) -> str:
        return f"{self.title} · {self.start:%a %Y-%m-%d %H:%M}–{self.end:%H:%M}"

    def to_dict(self) -> dict[str, str]:
        return {"uid": self.uid, "title": self.title, "start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True, slots=True)
class Change:
    """One change to apply: create (before None), move (both), delete (after None)."""

    action: str
    before: Event | None
    after: Event | None

    def describe(self) -> str:
        if self.action == "create" and self.after:
            return f"create: {self.after.describe()}"
        if self.action == "delete" and self.before:
            return f"delete: {self.before.describe()}"
        assert self.before and self.after
        return f"move: {self.before.describe()}  →  {self.after.start:%a %Y-%m-%d %H:%M}–{self.after.end:%H:%M}"

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "description": self.describe(),
                "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None}


def _as_datetime(value: date | datetime) -> datetime:
    """Naive local wall time for comparing and showing (an all-day event starts at midnight)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.combine(value, datetime.min.time())


class CalendarFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.calendar = _read(self.path)

    def events(self) -> list[Event]:
        found = []
        for component in self.calendar.walk("VEVENT"):
            start = component.get("DTSTART").dt
            end_prop = component.get("DTEND")
            end = end_prop.dt if end_prop is not None else start + (
                component.get("DURATION").dt if component.get("DURATION") is not None else timedelta(hours=1))
            found.append(Event(str(component.get("UID")), str(component.get("SUMMARY", "")),
                               _as_datetime(start), _as_datetime(end)))
        return sorted(found, key=lambda e: e.start)

    def between(self, start: datetime, end: datetime) -> list[Event]:
        return [e for e in self.events() if e.start < end and e.end > start or start <= e.start < end]

    def apply(self, changes: list[Change]) -> None:
        """Apply the changes in memory, then replace the file atomically (no changes: no write)."""
        if not changes:
            return
        for change in changes:
            getattr(self, f"_{change.action}")(change)
        self._write()

    def _component(self, uid: str) -> Any:
        for component in self.calendar.walk("VEVENT"):
            if str(component.get("UID")) == uid:
                return component
        raise CalendarError(f"{self.path}: no event with UID {uid!r} (was the file changed meanwhile?)")

    def _create(self, change: Change) -> None:
        icalendar = _icalendar()
        assert change.after
        event = icalendar.Event()
        event.add("uid", change.after.uid)
        event.add("summary", change.after.title)
        event.add("dtstart", change.after.start)
        event.add("dtend", change.after.end)
        event.add("dtstamp", datetime.now().astimezone())
        self.calendar.add_component(event)

    def _move(self, change: Change) -> None:
        assert change.before and change.after
        component = self._component(change.before.uid)
        original = component.get("DTSTART").dt
        tz = original.tzinfo if isinstance(original, datetime) else None
        for key, value in (("DTSTART", change.after.start), ("DTEND", change.after.end)):
            component.pop(key, None)
            component.add(key.lower(), value.replace(tzinfo=tz) if tz else value)
        component.pop("DURATION", None)

    def _delete(self, change: Change) -> None:
        assert change.before
        component = self._component(change.before.uid)
        self.calendar.subcomponents.remove(component)

    def _write(self) -> None:
        write_atomically(self.path, self.calendar.to_ical())


def write_atomically(path: Path, blob: bytes) -> None:
    """`blob` written to a temporary file beside `path` (mode 0600) and renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CalendarError(f"{path.name}: cannot write the calendar ({exc.strerror})") from exc


def new_uid() -> str:
    return f"{uuid.uuid4()}@luodi"


def check_ics(blob: bytes, name: str) -> None:
    """Raise `CalendarError` naming the problem (reported as `name`) unless `blob` is a calendar
    `CalendarFile` reads: what an upload is checked with before it is stored."""
    if len(blob) > MAX_ICS_BYTES:
        raise CalendarError(f"{name}: {len(blob) / 2**20:.1f} MB is too large for a calendar "
                            f"(at most {MAX_ICS_BYTES // 2**20} MB)")
    _parse(blob, name)


def _read(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_ICS_BYTES:
            raise CalendarError(f"{path}: {size / 2**20:.1f} MB is too large for a calendar "
                                f"(at most {MAX_ICS_BYTES // 2**20} MB)")
        blob = path.read_bytes()
    except IsADirectoryError as exc:
        raise CalendarError(f"{path} is a directory; give an .ics file") from exc
    except OSError as exc:
        raise CalendarError(f"{path}: cannot read the calendar ({exc.strerror})") from exc
    return _parse(blob, path)


def _parse(blob: bytes, path: Path | str) -> Any:
    icalendar = _icalendar()
    text = blob.strip()
    if not (text.startswith(b"BEGIN:VCALENDAR") and text.endswith(b"END:VCALENDAR")):
        raise CalendarError(f"{path}: not an iCalendar file (it must begin with BEGIN:VCALENDAR and end with "
                            "END:VCALENDAR); the file was left untouched")
    try:
        calendar = icalendar.Calendar.from_ical(blob)
        for component in calendar.walk():
            if component.errors:
                raise ValueError(f"{component.name}: {component.errors[0][1]}")
            if component.name == "VEVENT":
                _check_event(component)
    except (ValueError, KeyError, TypeError) as exc:
        raise CalendarError(f"{path}: malformed iCalendar ({exc}); the file was left untouched") from exc
    return calendar


def _check_event(component: Any) -> None:
    start = component.get("DTSTART")  # a DTSTART that does not parse is in `component.errors` already
    if start is None or not isinstance(start.dt, date):
        raise ValueError(f"event {component.get('UID')!s} has no DTSTART date")
