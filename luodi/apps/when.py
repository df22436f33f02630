"""Dates and times in requests, read in code: "Tuesday", "next Friday 3pm", "tomorrow morning",
"2026-12-08 09:30", "明天上午", "下周二下午3点半", "周四15:00".

Owns turning such phrases into a day range or a start time relative to a given `now`. A small model
copies or invents dates unreliably, so the schedule assistant takes every date from here and leaves
the model only the choice of action and event. A weekday alone means its next occurrence, today
included; "next" / 下 moves it a week on.

Must not know: calendars, models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

_WEEKDAYS_EN = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_WEEKDAYS_EN_SHORT = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS_ZH = "一二三四五六日"
_ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9,
              "十": 10, "十一": 11, "十二": 12}
# parts of the day: (start hour, end hour); a bare hour inside "afternoon" is p.m.
_PARTS = {"morning": (6, 12), "上午": (6, 12), "早上": (6, 12), "afternoon": (12, 18), "下午": (12, 18),
          "中午": (11, 14), "evening": (18, 24), "tonight": (18, 24), "晚上": (18, 24)}
_PM_PARTS = {"afternoon", "下午", "evening", "tonight", "晚上"}


@dataclass(frozen=True, slots=True)
class When:
    """A day mentioned in a request, with a time of day or a part of the day if given."""

    day: date
    at: time | None = None
    part: tuple[int, int] | None = None  # hours [start, end)
    span: tuple[int, int] = (0, 0)  # where it was found in the text

    @property
    def start(self) -> datetime:
        hour = self.part[0] if self.part else 0
        return datetime.combine(self.day, self.at or time(hour))

    @property
    def end(self) -> datetime:
        if self.at:
            return self.start
        if self.part:
            return datetime.combine(self.day, time(0)) + timedelta(hours=self.part[1])
        return datetime.combine(self.day + timedelta(days=1), time(0))


_DAY = re.compile(
    r"(?P<iso>\d{4}-\d{2}-\d{2})|(?P<rel>day after tomorrow|today|tomorrow|tonight|今天|明天|后天|今晚)"
    r"|(?P<next>next\s+|this\s+|下(?:个)?|这(?:个)?|本)?(?:(?P<en>" + "|".join(_WEEKDAYS_EN + _WEEKDAYS_EN_SHORT) +
    r")\b|(?:周|星期|礼拜)(?P<zh>[一二三四五六日天]))", re.IGNORECASE)
_PART = re.compile("|".join(map(re.escape, _PARTS)), re.IGNORECASE)
_TIME_EN = re.compile(r"\b(?:at\s+)?(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<ap>am|pm|a\.m\.|p\.m\.)?(?![\d-])", re.I)
_TIME_ZH = re.compile(r"(?P<h>\d{1,2}|十[一二]?|[一二两三四五六七八九])\s*[点點](?:(?P<m>\d{1,2})分?|(?P<half>半))?")


def find_days(text: str, now: datetime) -> list[When]:
    """Every day named in `text`, in order, each with the time or part of day near it (never one
    that belongs to the next day named)."""
    matches = list(_DAY.finditer(text))
    found = []
    for index, match in enumerate(matches):
        stop = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        begin = matches[index - 1].end() if index else 0
        tail = text[match.end():min(stop, match.end() + 24)]
        head = text[max(begin, match.start() - 12):match.start()]
        part = _part(head + " " + tail, match.group(0))
        at = _time(tail, part)
        found.append(When(_resolve_day(match, now.date()), at, _PARTS[part.lower()] if part else None,
                          (match.start(), match.end())))
    return found


def _resolve_day(match: re.Match[str], today: date) -> date:
    if match.group("iso"):
        return date.fromisoformat(match.group("iso"))
    rel = (match.group("rel") or "").lower()
    if rel:
        offset = {"today": 0, "tonight": 0, "今天": 0, "今晚": 0, "tomorrow": 1, "明天": 1, "day after tomorrow": 2,
                  "后天": 2}[rel]
        return today + timedelta(days=offset)
    if match.group("en"):
        name = match.group("en").lower()
        weekday = (_WEEKDAYS_EN if name in _WEEKDAYS_EN else _WEEKDAYS_EN_SHORT).index(name)
    else:
        weekday = _WEEKDAYS_ZH.index("日" if match.group("zh") == "天" else match.group("zh"))
    day = today + timedelta(days=(weekday - today.weekday()) % 7)
    prefix = (match.group("next") or "").strip().lower()
    if prefix in ("next", "下", "下个"):
        # "next Tuesday" / 下周二: the one in next week (Monday-based weeks)
        day = today - timedelta(days=today.weekday()) + timedelta(days=7 + weekday)
    return day


def _part(context: str, day_text: str) -> str | None:
    if day_text.lower() == "tonight" or day_text == "今晚":
        return "tonight"
    match = _PART.search(context)
    return match.group(0) if match else None


def _time(tail: str, part: str | None) -> time | None:
    zh = _TIME_ZH.search(tail)
    if zh:
        hour = int(zh.group("h")) if zh.group("h").isdigit() else _ZH_DIGITS[zh.group("h")]
        minute = 30 if zh.group("half") else int(zh.group("m") or 0)
        return _clock(hour, minute, part, None)
    for en in _TIME_EN.finditer(tail):
        # a bare number is a time only with am/pm, a colon, or "at"
        if en.group("ap") or en.group("m") or en.group(0).lower().startswith("at"):
            return _clock(int(en.group("h")), int(en.group("m") or 0), part, en.group("ap"))
    return None


def _clock(hour: int, minute: int, part: str | None, ampm: str | None) -> time | None:
    if ampm and ampm.lower().startswith("p") and hour < 12:
        hour += 12
    elif ampm and ampm.lower().startswith("a") and hour == 12:
        hour = 0
    elif not ampm and part and part.lower() in _PM_PARTS and hour < 12:
        hour += 12
    if not (0 <= hour < 24 and 0 <= minute < 60):
        return None
    return time(hour, minute)


def find_duration(text: str) -> timedelta | None:
    """"for 90 minutes", "for 2 hours", "1小时", "半小时", "30分钟"."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*(minutes?|mins?|hours?|hrs?|h\b|分钟|小时|个小时)", text, re.IGNORECASE)
    if match:
        value, unit = float(match.group(1)), match.group(2).lower()
        return timedelta(minutes=value) if unit.startswith(("min", "分")) else timedelta(hours=value)
    if "半小时" in text or "half an hour" in text.lower():
        return timedelta(minutes=30)
    return None
