"""Dates in meeting talk, resolved in code against the meeting's date — never left to the model.

Owns: reading a meeting's own date ("2024-12-02", "2024年12月2日", "December 2, 2024") and finding
a due date in a sentence, Chinese or English, absolute or relative: "12月20日之前", "by December 8",
"next Friday", "下周五", "周五前", "明天", "月底", "end of the week", "within 3 days", "两周内".

Conventions (fixed, so results are reproducible): a month-day without a year is the next one on or
after the meeting; "Friday" / "周五" / "this Friday" is the first Friday after the meeting day;
"next Friday" / "下周五" is the Friday of the following Monday-based week; "end of the week" / "本周"
is that week's Friday; "end of the month" / "月底" its last day.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, timedelta

_MONTHS = {name: i for i, names in enumerate(
    [(), ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",),
     ("june", "jun"), ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"),
     ("november", "nov"), ("december", "dec")]) for name in names}
_WEEKDAYS_EN = {d: i for i, d in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                             "sunday"))}
_WEEKDAYS_ZH = {c: i for i, c in enumerate("一二三四五六日")} | {"天": 6}
_ZH_NUM = {c: i for i, c in enumerate("零一二两三四五六七八九十")} | {"两": 2, "十": 10}
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))

_ISO = re.compile(r"(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})")
_ZH_YMD = re.compile(r"(?:(?P<y>\d{4})年)?(?P<m>\d{1,2})月(?P<d>\d{1,2})[日号]")
_EN_MD = re.compile(rf"\b(?P<mon>{_MONTH_RE})\.?\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?(?:,?\s+(?P<y>\d{{4}}))?\b", re.I)
_EN_DM = re.compile(rf"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<mon>{_MONTH_RE})\b\.?(?:,?\s+(?P<y>\d{{4}}))?",
                    re.I)
_EN_WEEKDAY = re.compile(r"\b(?P<next>next\s+|this\s+|coming\s+|last\s+|past\s+)?(?P<day>monday|tuesday|wednesday|thursday|friday|"
                         r"saturday|sunday)\b", re.I)
_ZH_WEEKDAY = re.compile(r"(?P<which>下下|下个?|这个?|本|上个?)?(?:周|星期|礼拜)(?P<day>[一二三四五六日天])")
_ZH_IN_DAYS = re.compile(r"(?P<n>\d+|[一二两三四五六七八九十]+)(?P<unit>天|周|个星期|星期)(?:之?内|以内)")
_EN_IN_DAYS = re.compile(r"\bwithin\s+(?P<n>\d+|one|two|three|four|five|six|seven)\s+(?P<unit>days?|weeks?)\b", re.I)
_EN_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def parse_meeting_date(text: str) -> date | None:
    """A full date stated in `text` (a header's value), or None."""
    for pattern in (_ISO, _ZH_YMD, _EN_MD, _EN_DM):
        for m in pattern.finditer(text):
            if m["y"]:
                found = _make(int(m["y"]), _month(m), int(m["d"]))
                if found:
                    return found
    return None


def resolve_due(sentence: str, meeting: date | None) -> date | None:
    """The due date a sentence states, resolved against the meeting's date; None if it states
    none, or only a relative one and the meeting's date is unknown."""
    absolute = _absolute(sentence, meeting)
    if absolute is not None or meeting is None:
        return absolute
    return _relative(sentence, meeting)


def _absolute(sentence: str, meeting: date | None) -> date | None:
    for pattern in (_ISO, _ZH_YMD, _EN_MD, _EN_DM):
        for m in pattern.finditer(sentence):
            month, day = _month(m), int(m["d"])
            if m["y"]:
                found = _make(int(m["y"]), month, day)
            elif meeting is not None:
                found = _next_month_day(meeting, month, day)
            else:
                found = None
            if found:
                return found
    return None


def _relative(s: str, meeting: date) -> date | None:
    lower = s.lower()
    if (m := _ZH_WEEKDAY.search(s)) and (m["which"] or "").startswith("上"):
        return None  # 上周五: a day past, not a due
    if m:
        return _weekday(meeting, _WEEKDAYS_ZH[m["day"]], {"下": 1, "下个": 1, "下下": 2}.get(m["which"] or "", 0))
    if (m := _EN_WEEKDAY.search(s)) and (m["next"] or "").strip().lower() in ("last", "past"):
        return None
    if m:
        return _weekday(meeting, _WEEKDAYS_EN[m["day"].lower()], 1 if (m["next"] or "").strip().lower() == "next" else 0)
    if m := _ZH_IN_DAYS.search(s) or _EN_IN_DAYS.search(s):
        n = _number(m["n"])
        return meeting + timedelta(days=n * (7 if m["unit"].lower().rstrip("s") in ("周", "个星期", "星期", "week") else 1))
    for words, days in ((("后天", "day after tomorrow"), 2), (("明天", "tomorrow"), 1), (("今天", "today", "end of day"), 0)):
        if any(w in lower for w in words):
            return meeting + timedelta(days=days)
    if any(w in lower for w in ("下周", "next week")):
        return _weekday(meeting, 4, 1)
    if any(w in lower for w in ("本周", "这周", "周末前", "end of the week", "end of this week", "this week")):
        return meeting + timedelta(days=(4 - meeting.weekday()) % 7)
    if any(w in lower for w in ("月底", "end of the month", "end of this month")):
        return meeting.replace(day=calendar.monthrange(meeting.year, meeting.month)[1])
    return None


def _weekday(meeting: date, weekday: int, weeks_ahead: int) -> date:
    """weeks_ahead 0: the first such day after the meeting; n: that day in the n-th following week."""
    if weeks_ahead == 0:
        return meeting + timedelta(days=(weekday - meeting.weekday() - 1) % 7 + 1)
    monday = meeting - timedelta(days=meeting.weekday()) + timedelta(weeks=weeks_ahead)
    return monday + timedelta(days=weekday)


def _next_month_day(meeting: date, month: int, day: int) -> date | None:
    found = _make(meeting.year, month, day)
    if found is not None and found < meeting:
        found = _make(meeting.year + 1, month, day)
    return found


def _month(m: re.Match[str]) -> int:
    groups = m.groupdict()
    return _MONTHS[groups["mon"].lower().rstrip(".")] if groups.get("mon") else int(groups["m"])


def _make(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _number(text: str) -> int:
    if text.isdigit():
        return int(text)
    if text.lower() in _EN_NUMBERS:
        return _EN_NUMBERS[text.lower()]
    if len(text) == 2 and text[0] == "十":
        return 10 + _ZH_NUM[text[1]]
    if len(text) >= 2 and text[-1] == "十":
        return _ZH_NUM[text[0]] * 10
    return _ZH_NUM.get(text, 1)
