"""Dates and times read from requests, against hand-computed days (now: Monday 2026-12-07 09:00)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest

from luodi.apps.when import find_days, find_duration

NOW = datetime(2026, 12, 7, 9, 0)  # a Monday


@pytest.mark.parametrize(("text", "expected"), [
    ("move Tuesday's review to Thursday 3pm", [(date(2026, 12, 8), None), (date(2026, 12, 10), time(15))]),
    ("明天上午有什么安排", [(date(2026, 12, 8), None)]),
    ("下周二下午3点半开会", [(date(2026, 12, 15), time(15, 30))]),
    ("tomorrow at 10:30", [(date(2026, 12, 8), time(10, 30))]),
    ("next Friday 9am", [(date(2026, 12, 18), time(9))]),
    ("2026-12-20 14:00 dentist", [(date(2026, 12, 20), time(14))]),
    ("周四15:00", [(date(2026, 12, 10), time(15))]),
    ("what is on today?", [(date(2026, 12, 7), None)]),
    ("today 12am", [(date(2026, 12, 7), time(0))]),
    ("今晚8点", [(date(2026, 12, 7), time(20))]),
    ("monday", [(date(2026, 12, 7), None)]),  # a weekday alone: today counts
    ("星期天", [(date(2026, 12, 13), None)]),
    ("the 25 people", []),
])
def test_days_and_times(text, expected):
    assert [(w.day, w.at) for w in find_days(text, NOW)] == expected


def test_part_of_day_is_a_range():
    (morning,) = find_days("明天上午", NOW)
    assert (morning.start, morning.end) == (datetime(2026, 12, 8, 6), datetime(2026, 12, 8, 12))
    (whole,) = find_days("tomorrow", NOW)
    assert whole.end - whole.start == timedelta(days=1)


@pytest.mark.parametrize(("text", "expected"), [
    ("for 45 minutes", timedelta(minutes=45)), ("2 hours", timedelta(hours=2)), ("1.5h", timedelta(minutes=90)),
    ("开会半小时", timedelta(minutes=30)), ("30分钟", timedelta(minutes=30)), ("lunch", None)])
def test_durations(text, expected):
    assert find_duration(text) == expected
