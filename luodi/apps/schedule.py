"""The schedule assistant: a request in words ("move Tuesday's review to Thursday 3pm", "明天上午有什么
安排") becomes calls to calendar tools in a tool-calling loop, and the calls become changes to show.

Owns the loop and the division of labour. The model, its answer held to the tools by a grammar
(`luodi.toolcall`), chooses the action and the event; an event's title is an enum of the titles
the calendar holds, so it cannot name one that does not exist. Dates and times are read from the
request in code (`when`), never taken from the model. When the request's words name exactly one
action (a verb like "move" / 改到), the call is narrowed to that tool — a 135M model picks the
wrong tool too often otherwise; a larger model would not need it. A `list_events` call feeds its
result back and the model is asked again, up to `MAX_ROUNDS`. Nothing is written here: the caller
shows the planned changes and applies them (`CalendarFile.apply`).

Must not know: HTTP, the CLI, the file format (`calendar_file`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from luodi.apps.calendar_file import CalendarError, CalendarFile, Change, Event, new_uid
from luodi.apps.generation import Generate, engine_generate
from luodi.apps.when import When, find_days, find_duration
from luodi.engine.grammar import GrammarSpec
from luodi.engine.sampling import SamplingParams
from luodi.llm import LLM, Message
from luodi.toolcall import Tool, ToolCalling, ToolChoice, detect_format, parse_tools

MAX_ROUNDS = 3
_INTENTS = {
    "move_event": r"\b(move|reschedule|postpone|push|shift|change)\b|改到|挪到|推迟|移到|调到|改成|提前",
    "delete_event": r"\b(delete|cancel|remove|drop)\b|取消|删除|删掉|去掉",
    "create_event": r"\b(add|create|book|schedule|set up|new)\b|添加|新建|加一个|约|安排一个|订",
    "list_events": r"\b(what|show|list|anything|any)\b|有什么|有哪些|查看|看看|什么安排|几点",
}
SYSTEM = ("You manage the user's calendar with tools. Today is {today}. Call exactly one tool: "
          "list_events to see events, create_event to add one, move_event to move one, delete_event to delete one.")


class ScheduleError(CalendarError):
    """A request the assistant cannot turn into a change: no day named, no such event."""


@dataclass(slots=True)
class ScheduleResult:
    answer: str
    changes: list[Change] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)  # what a list request found
    calls: list[dict[str, Any]] = field(default_factory=list)  # the model's calls, in order

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "changes": [c.describe() for c in self.changes],
                "events": [e.describe() for e in self.events], "calls": self.calls}


def intent_of(request: str) -> str | None:
    """The one tool the request's words name, or None when they name none or several."""
    found = [name for name, pattern in _INTENTS.items() if re.search(pattern, request, re.IGNORECASE)]
    if "move_event" in found and "create_event" in found:
        found.remove("create_event")  # "schedule" inside a move request ("reschedule" aside)
    return found[0] if len(found) == 1 else None


def tools_for(titles: list[str]) -> list[Tool]:
    title_enum = {"type": "string", "enum": sorted(set(titles))} if titles else {"type": "string", "maxLength": 60}
    event = {"type": "object", "properties": {"title": title_enum}, "required": ["title"]}
    new = {"type": "object", "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 40}},
           "required": ["title"]}
    return parse_tools([
        ("list_events", "List the events on the day the user asked about.", {"type": "object", "properties": {}}),
        ("create_event", "Create an event with this title at the time the user gave.", new),
        ("move_event", "Move the event with this title to the time the user gave.", event),
        ("delete_event", "Delete the event with this title.", event),
    ])


class ScheduleAssistant:
    def __init__(self, llm: LLM, calendar: CalendarFile, now: datetime | None = None,
                 generate: Generate | None = None) -> None:
        self.llm = llm
        self.calendar = calendar
        self.now = now or datetime.now()
        self.generate = generate or engine_generate(llm)  # the server passes one through its async engine

    def handle(self, request: str, params: SamplingParams = SamplingParams(max_tokens=128, temperature=0.0)) -> ScheduleResult:
        if not request.strip():
            raise ScheduleError("the request is empty; say what to do, e.g. 'what is on tomorrow?'")
        days = find_days(request, self.now)
        messages: list[Message] = [{"role": "system", "content": SYSTEM.format(today=f"{self.now:%A %Y-%m-%d}")},
                                   {"role": "user", "content": request}]
        result = ScheduleResult(answer="")
        intent = intent_of(request)
        for _ in range(MAX_ROUNDS):
            name, arguments = self._call(messages, self._candidate_titles(request, days), intent, params)
            result.calls.append({"name": name, "arguments": arguments})
            if name == "list_events":
                result.events = self._list(days)
                result.answer = _describe_events(result.events, days)
                if intent in (None, "list_events"):
                    return result
                messages += _tool_round(name, arguments, [e.describe() for e in result.events])
                continue
            result.changes = [self._plan(name, arguments.get("title", ""), days, request)]
            result.answer = result.changes[0].describe()
            return result
        return result

    def _call(self, messages: list[Message], titles: list[str], intent: str | None,
              params: SamplingParams) -> tuple[str, dict[str, Any]]:
        choice = ToolChoice("required", intent) if intent else ToolChoice("required")
        calling = ToolCalling(detect_format(self.llm.tokenizer.chat_template), tuple(tools_for(titles)), choice,
                              is_parallel=False)
        rendered, tool_defs = calling.render(messages)
        grammar = calling.grammar(self.llm.tokenizer.special_token_ids)
        assert grammar is not None  # a required choice always has one
        params = dataclasses.replace(params, grammar=GrammarSpec("lark", grammar, param="tools"))
        [text] = self.generate([self.llm.prompt_ids(rendered, tools=tool_defs)], [params])
        _, calls = calling.split(text)
        if not calls:  # cut short by max_tokens: the grammar allows nothing but a call otherwise
            raise ScheduleError("the model did not finish a tool call; raise --max-tokens")
        return calls[0].name, json.loads(calls[0].arguments)

    def _candidate_titles(self, request: str, days: list[When]) -> list[str]:
        """Titles of the events the request could mean: on the first day named, and among those the
        ones whose words the request uses, when any do."""
        events = self.calendar.events()
        if days:
            on_day = [e for e in events if e.start.date() == days[0].day]
            events = on_day or events
        titles = [e.title for e in events]
        named = [t for t in titles if any(w.lower() in request.lower() for w in re.findall(r"\w+", t) if len(w) > 1)]
        return named or titles

    def _list(self, days: list[When]) -> list[Event]:
        if not days:
            start = datetime.combine(self.now.date(), datetime.min.time())
            return self.calendar.between(start, start + timedelta(days=7))
        return self.calendar.between(days[0].start, days[0].end)

    def _plan(self, action: str, title: str, days: list[When], request: str) -> Change:
        if action == "create_event":
            return self._plan_create(title, days, request)
        source = days[0] if len(days) > 1 or action == "delete_event" else None
        event = self._find(title, source)
        if action == "delete_event":
            return Change("delete", event, None)
        target = days[-1] if days else None
        if target is None or (target.at is None and target.day == event.start.date()):
            raise ScheduleError(f"say when to move {event.title!r} to, e.g. 'to Thursday 3pm'")
        start = datetime.combine(target.day, target.at or event.start.time())
        return Change("move", event, dataclasses.replace(event, start=start, end=start + (event.end - event.start)))

    def _plan_create(self, title: str, days: list[When], request: str) -> Change:
        when = next((d for d in days if d.at is not None), days[0] if days else None)
        if when is None or (when.at is None and when.part is None):
            raise ScheduleError("say when the new event starts, e.g. 'tomorrow at 10am' or '明天下午3点'")
        start = when.start
        event = Event(new_uid(), title.strip(), start, start + (find_duration(request) or timedelta(hours=1)))
        return Change("create", None, event)

    def _find(self, title: str, day: When | None) -> Event:
        matches = [e for e in self.calendar.events() if e.title == title and (day is None or e.start.date() == day.day)]
        if not matches:
            where = f" on {day.day:%A %Y-%m-%d}" if day else ""
            raise ScheduleError(f"no event called {title!r}{where} in {self.calendar.path.name}")
        upcoming = [e for e in matches if e.end >= self.now]
        return (upcoming or matches)[0]


def _tool_round(name: str, arguments: dict[str, Any], result: list[str]) -> list[Message]:
    call = {"id": f"call_{len(result)}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result, ensure_ascii=False)}]


def _describe_events(events: list[Event], days: list[When]) -> str:
    span = f"{days[0].day:%A %Y-%m-%d}" if days else "the next 7 days"
    if not events:
        return f"Nothing on {span}."
    return f"{span}:\n" + "\n".join(f"- {e.describe()}" for e in events)
