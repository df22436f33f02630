"""The schedule assistant on SmolLM2-135M against a real .ics file: scripted requests give the expected
events, read back with `icalendar`; a malformed file is a clear error and stays byte-for-byte the same."""

from __future__ import annotations

from datetime import datetime

import pytest

from luodi.apps.calendar_file import CalendarError, CalendarFile
from luodi.apps.schedule import ScheduleAssistant, ScheduleError, intent_of
from model_cache import pulled_model_path

icalendar = pytest.importorskip("icalendar")
NOW = datetime(2026, 12, 7, 9, 0)  # a Monday
ICS = """BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//Luodi tests//EN\r
BEGIN:VEVENT\r
UID:review-1@test\r
SUMMARY:Design review\r
DTSTART:20261208T100000\r
DTEND:20261208T110000\r
LOCATION:Room 4\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:standup-1@test\r
SUMMARY:Standup\r
DTSTART:20261208T090000\r
DTEND:20261208T091500\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:dentist-1@test\r
SUMMARY:Dentist\r
DTSTART:20261209T150000\r
DTEND:20261209T160000\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:party-1@test\r
SUMMARY:Team dinner\r
DTSTART:20261208T190000\r
DTEND:20261208T210000\r
END:VEVENT\r
END:VCALENDAR\r
"""


@pytest.fixture(scope="module")
def llm():
    from luodi.llm import LLM

    return LLM.load(str(pulled_model_path("smollm2-135m-instruct")))


@pytest.fixture
def ics(tmp_path):
    path = tmp_path / "cal.ics"
    path.write_text(ICS)
    return path


def read_back(path) -> dict[str, tuple[datetime, datetime]]:
    calendar = icalendar.Calendar.from_ical(path.read_bytes())
    return {str(e["SUMMARY"]): (e["DTSTART"].dt, e["DTEND"].dt) for e in calendar.walk("VEVENT")}


def run(llm, path, request):
    calendar = CalendarFile(path)
    result = ScheduleAssistant(llm, calendar, NOW).handle(request)
    calendar.apply(result.changes)
    return result


def test_move_keeps_duration_and_other_properties(llm, ics):
    result = run(llm, ics, "Move Tuesday's review to Thursday 3pm")
    assert result.calls[0]["name"] == "move_event"
    events = read_back(ics)
    assert events["Design review"] == (datetime(2026, 12, 10, 15), datetime(2026, 12, 10, 16))
    assert events["Standup"] == (datetime(2026, 12, 8, 9), datetime(2026, 12, 8, 9, 15))
    moved = next(e for e in icalendar.Calendar.from_ical(ics.read_bytes()).walk("VEVENT") if e["UID"] == "review-1@test")
    assert str(moved["LOCATION"]) == "Room 4"


def test_list_in_chinese_changes_nothing(llm, ics):
    result = run(llm, ics, "明天上午有什么安排")
    assert [e.title for e in result.events] == ["Standup", "Design review"]  # the evening dinner is not morning
    assert result.changes == [] and ics.read_bytes() == ICS.encode()


def test_delete_and_create(llm, ics):
    run(llm, ics, "Cancel the dentist on Wednesday")
    assert "Dentist" not in read_back(ics)
    result = run(llm, ics, "添加 明天下午3点半 和张三开会 1小时")
    (created,) = [c.after for c in result.changes]
    assert read_back(ics)[created.title] == (datetime(2026, 12, 8, 15, 30), datetime(2026, 12, 8, 16, 30))
    assert len(read_back(ics)) == 4


def test_move_without_a_target_is_a_clear_error(llm, ics):
    with pytest.raises(ScheduleError, match="say when to move"):
        ScheduleAssistant(llm, CalendarFile(ics), NOW).handle("move the standup")


@pytest.mark.parametrize(("text", "intent"), [
    ("reschedule the review to Friday", "move_event"), ("明天有什么安排", "list_events"),
    ("取消周三的会", "delete_event"), ("book a call tomorrow at 4pm", "create_event"), ("hello", None)])
def test_intent_words(text, intent):
    assert intent_of(text) == intent


@pytest.mark.parametrize(("content", "needle"), [
    ("garbage", "not an iCalendar file"),
    (ICS.replace("DTSTART:20261209T150000", "DTSTART:notadate"), "malformed iCalendar"),
    (ICS[: len(ICS) // 2], "not an iCalendar file"),
    (ICS.replace("DTSTART:20261209T150000\r\n", ""), "no DTSTART"),
])
def test_malformed_calendar_is_an_error_and_untouched(tmp_path, content, needle):
    path = tmp_path / "bad.ics"
    path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(CalendarError, match=needle):
        CalendarFile(path)
    assert path.read_bytes() == before


def test_big_and_missing_files(tmp_path):
    big = tmp_path / "big.ics"
    with big.open("wb") as f:
        f.truncate(50 * 2**20)
    with pytest.raises(CalendarError, match="too large"):
        CalendarFile(big)
    with pytest.raises(CalendarError, match="cannot read"):
        CalendarFile(tmp_path / "missing.ics")
