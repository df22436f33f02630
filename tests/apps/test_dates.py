"""Due dates resolved against the meeting's date; expected values computed by hand on a calendar.
2024-12-02 is a Monday; 2024-12-20 a Friday."""

from datetime import date

import pytest

from luodi.apps.dates import parse_meeting_date, resolve_due

MONDAY = date(2024, 12, 2)
FRIDAY = date(2024, 12, 20)


@pytest.mark.parametrize(("sentence", "meeting", "expected"), [
    ("请在12月20日之前提交报告", MONDAY, date(2024, 12, 20)),
    ("I'll send it by December 8", MONDAY, date(2024, 12, 8)),
    ("by Dec 8th", MONDAY, date(2024, 12, 8)),
    ("by the 3rd of January", MONDAY, date(2025, 1, 3)),  # no year: the next 3 January after the meeting
    ("11月30日前", MONDAY, date(2025, 11, 30)),  # already past this year: next year's
    ("deadline 2025-01-10", MONDAY, date(2025, 1, 10)),
    ("2025年2月1日之前", MONDAY, date(2025, 2, 1)),
    ("next Friday", MONDAY, date(2024, 12, 13)),  # the Friday of the following week
    ("by Friday", MONDAY, date(2024, 12, 6)),  # the first Friday after the meeting
    ("by Friday", FRIDAY, date(2024, 12, 27)),  # said on a Friday: the next one
    ("下周五之前", MONDAY, date(2024, 12, 13)),
    ("周五前", MONDAY, date(2024, 12, 6)),
    ("下周三", FRIDAY, date(2024, 12, 25)),
    ("明天", MONDAY, date(2024, 12, 3)),
    ("tomorrow", FRIDAY, date(2024, 12, 21)),
    ("后天", MONDAY, date(2024, 12, 4)),
    ("月底", MONDAY, date(2024, 12, 31)),
    ("两周内", FRIDAY, date(2025, 1, 3)),
    ("within 3 days", MONDAY, date(2024, 12, 5)),
    ("by the end of the week", MONDAY, date(2024, 12, 6)),
    ("本周内", MONDAY, date(2024, 12, 6)),
    ("下周", MONDAY, date(2024, 12, 13)),
])
def test_due_dates(sentence, meeting, expected):
    assert resolve_due(sentence, meeting) == expected


@pytest.mark.parametrize("sentence", ["Last Thursday the service was down", "上周五上线了", "我们讨论一下", "Sounds good."])
def test_no_due(sentence):
    assert resolve_due(sentence, MONDAY) is None


def test_relative_due_needs_the_meeting_date():
    assert resolve_due("next Friday", None) is None
    assert resolve_due("by 2025-01-10", None) == date(2025, 1, 10)
    assert resolve_due("by December 8", None) is None  # no year and no meeting date to take it from


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-12-02", date(2024, 12, 2)), ("2024年12月2日", date(2024, 12, 2)),
    ("December 2, 2024", date(2024, 12, 2)), ("Monday, 2 December 2024", date(2024, 12, 2)), ("soon", None),
])
def test_meeting_date(text, expected):
    assert parse_meeting_date(text) == expected
