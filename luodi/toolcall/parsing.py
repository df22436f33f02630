"""Generated text back into calls: whole (`parse_calls`) or as deltas while it streams (`ToolCallParser`).

Owns reading a format's block of calls out of the answer text: the text before the trigger is the
message content, each call gives its name and its arguments exactly as generated (JSON text, not
re-serialized, so streamed pieces concatenate to the non-streamed call). The stream parser
re-reads the text it has so far and sends only what is new and settled: content up to where a
trigger may be starting, a call's name once, then its arguments piece by piece.

Must not know: HTTP, the engine, the OpenAI wire types (the server wraps `CallDelta`s in them).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from luodi.toolcall.formats import ToolFormat


@dataclass(slots=True)
class ParsedCall:
    name: str | None  # None until the name is complete
    arguments: str = ""  # the arguments' JSON text so far
    is_complete: bool = False
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))


@dataclass(frozen=True, slots=True)
class CallDelta:
    """One streamed piece of call `index`: its id and name the first time, then argument text."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


def parse_calls(fmt: ToolFormat, text: str, *, final: bool = True) -> tuple[str, list[ParsedCall]]:
    """(content, calls) in `text`. Not `final`: content stops before a possible trigger's start, and
    the last call may be partial (name None, or arguments cut)."""
    start = text.find(fmt.trigger)
    if start < 0:
        return text[: len(text) - (0 if final else _partial_suffix(text, fmt.trigger))], []
    calls: list[ParsedCall] = []
    pos = _literal(text, start, fmt.block_open)
    while pos is not None:
        opening = fmt.call_open if not calls else fmt.separator + fmt.call_open
        at = _literal(text, pos, opening)
        if at is None:
            break
        call, pos = _call(fmt, text, at)
        calls.append(call)
        if not call.is_complete:
            break
    return text[:start], calls


def _call(fmt: ToolFormat, text: str, pos: int) -> tuple[ParsedCall, int | None]:
    end = _json_end(text, pos)
    if end is None:
        return ParsedCall(None), None
    try:
        name = json.loads(text[pos:end])
    except ValueError:
        return ParsedCall(None), None
    call = ParsedCall(name if isinstance(name, str) else None)
    at = _literal(text, end, fmt.args_open)
    if at is None or not text.startswith("{", at):
        return call, None
    end = _json_end(text, at)
    call.arguments = text[at:] if end is None else text[at:end]
    if end is None:
        return call, None
    after = _literal(text, end, fmt.call_close)
    call.is_complete = after is not None
    return call, after


def _literal(text: str, pos: int, literal: str) -> int | None:
    """The position after `literal` at `pos`, else None (it differs, or the text ends inside it)."""
    return pos + len(literal) if text.startswith(literal, pos) else None


def _partial_suffix(text: str, trigger: str) -> int:
    """The length of the longest end of `text` that is a proper start of `trigger`."""
    for size in range(min(len(trigger) - 1, len(text)), 0, -1):
        if trigger.startswith(text[-size:]):
            return size
    return 0


def _json_end(text: str, pos: int) -> int | None:
    """Where the JSON string, object or array starting at `pos` ends (exclusive); None if not yet."""
    depth, in_string, escaped = 0, False, False
    for index in range(pos, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if depth == 0:
                    return index + 1
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
        elif depth == 0:
            return None  # not a string, object or array
    return None


class ToolCallParser:
    """Feeds on the answer's text as it streams; `feed` returns the new content and call deltas."""

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt = fmt
        self.text = ""
        self.calls: list[ParsedCall] = []
        self._sent_content = 0
        self._sent_arguments: list[int] = []

    def feed(self, new_text: str, *, final: bool = False) -> tuple[str, list[CallDelta]]:
        self.text += new_text
        content, calls = parse_calls(self.fmt, self.text, final=final)
        content_delta = content[self._sent_content:]
        self._sent_content = len(content)
        deltas = []
        for index, call in enumerate(calls):
            if call.name is None:
                break
            if index == len(self.calls):  # a new call: its id and name, once
                self.calls.append(call)
                self._sent_arguments.append(0)
                deltas.append(CallDelta(index, "", id=call.id, name=call.name))
            known = self.calls[index]
            known.arguments, known.is_complete = call.arguments, call.is_complete
            piece = call.arguments[self._sent_arguments[index]:]
            if piece:
                self._sent_arguments[index] = len(call.arguments)
                deltas.append(CallDelta(index, piece))
        return content_delta, deltas

    def finish(self) -> tuple[str, list[CallDelta]]:
        """What is left once the answer is complete (content held back for a trigger that never came)."""
        return self.feed("", final=True)

    @property
    def content(self) -> str:
        return parse_calls(self.fmt, self.text)[0]
