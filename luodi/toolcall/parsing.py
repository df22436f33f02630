"""Generated text back into calls: whole (`split_answer`, `parse_calls`) or as deltas while it streams
(`ToolCallParser`).

Owns reading a format's block of calls out of the answer text: the text before the trigger is the
message content, each call gives its name and its arguments exactly as generated (JSON text, not
re-serialized, so streamed pieces concatenate to the non-streamed call). The stream parser
re-reads the text it has so far and sends only what is new and settled: content up to where a
trigger may be starting, then each call once it is complete and valid, as its id and name and
then its arguments. Whole answers go through the same parser, so the two cannot disagree.

Must not know: HTTP, the engine, the OpenAI wire types (the server wraps `CallDelta`s in them).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from luodi.toolcall.formats import ToolFormat
from luodi.toolcall.tools import Tool, validate_arguments


@dataclass(slots=True)
class ParsedCall:
    name: str | None  # None until the name is complete
    arguments: str = ""  # the arguments' JSON text so far
    is_complete: bool = False
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))
    end: int = 0  # where the call's text ends in the answer (after its closing literal), once complete


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
    call.end = after or 0
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
    """Feeds on the answer's text as it streams; `feed` returns the new content and call deltas.

    A call is sent only once it is complete and valid (given `tools`: it names one of them and its
    arguments validate against that tool's parameters), so a stream cut by max_tokens or a stop
    string never carries half a call. From the first call that is not (invalid, or cut off) the
    rest of the text is content: a model that writes a broken call gives text, never a broken call.
    """

    def __init__(self, fmt: ToolFormat, tools: Sequence[Tool] | None = None) -> None:
        self.fmt = fmt
        self._tools = None if tools is None else {t.name: t for t in tools}
        self.text = ""
        self.content = ""  # all content sent so far
        self.calls: list[ParsedCall] = []  # the calls sent, in order
        self._sent_content = 0  # characters of the text before the trigger sent as content
        self._calls_end: int | None = None  # where the last sent call ends (the trigger, before one)
        self._rest_sent: int | None = None  # once a call is broken: how far the rest is sent as content

    def feed(self, new_text: str, *, final: bool = False) -> tuple[str, list[CallDelta]]:
        self.text += new_text
        deltas: list[CallDelta] = []
        if self._rest_sent is None:
            content, calls = parse_calls(self.fmt, self.text, final=final)
            piece = content[self._sent_content:]
            self._sent_content = len(content)
            if self._calls_end is None and (at := self.text.find(self.fmt.trigger)) >= 0:
                self._calls_end = at  # the trigger: calls start here
            deltas = self._take(calls)
            if final and self._calls_end is not None and not self._ends_cleanly():
                self._rest_sent = self._calls_end
        else:
            piece = ""
        if self._rest_sent is not None:  # broken: everything from the last good call on is text
            piece += self.text[self._rest_sent:]
            self._rest_sent = len(self.text)
        self.content += piece
        return piece, deltas

    def finish(self) -> tuple[str, list[CallDelta]]:
        """What is left once the answer is complete: held-back content, or the text of a cut call."""
        return self.feed("", final=True)

    def _take(self, calls: list[ParsedCall]) -> list[CallDelta]:
        """Deltas for the calls newly complete; marks the answer broken at the first invalid one."""
        deltas = []
        for call in calls[len(self.calls):]:
            if not call.is_complete:
                break
            if not self._is_valid(call):
                self._rest_sent = self._calls_end
                break
            index = len(self.calls)
            self.calls.append(call)
            self._calls_end = call.end
            deltas += [CallDelta(index, "", id=call.id, name=call.name), CallDelta(index, call.arguments)]
        return deltas

    def _is_valid(self, call: ParsedCall) -> bool:
        if call.name is None:
            return False
        if self._tools is None:
            return True
        tool = self._tools.get(call.name)
        return tool is not None and validate_arguments(tool, call.arguments) is None

    def _ends_cleanly(self) -> bool:
        """A call was sent, and nothing but the block's close follows the last one."""
        assert self._calls_end is not None
        return bool(self.calls) and self.text[self._calls_end:] == self.fmt.block_close


def split_answer(fmt: ToolFormat, tools: Sequence[Tool] | None, text: str) -> tuple[str, list[ParsedCall]]:
    """(content, valid calls) of a whole answer, exactly as `ToolCallParser` streams them."""
    parser = ToolCallParser(fmt, tools)
    parser.feed(text, final=True)
    return parser.content, parser.calls
