"""Tool calling on the chat route: a request's tools in the served model's format, answers as OpenAI calls.

Owns: a request's `ToolCalling` (in the format the model's chat template declares, or the generic
one), its prompt, its grammar as the request's `GrammarSpec` (capped like any grammar), and each
choice's answer text turned into OpenAI's `tool_calls` — whole, or as streamed deltas that
concatenate to the whole — with `finish_reason: "tool_calls"` when an answer that ended on its own
made calls.

Must not know: how a format writes or parses calls (`luodi.toolcall`), the engine beyond
`SamplingParams`, HTTP.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from luodi.engine.grammar import GrammarSpec
from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError
from luodi.llm import LLM
from luodi.server import protocol as p
from luodi.server import responses as r
from luodi.server.limits import RequestLimits
from luodi.toolcall import CallDelta, ParsedCall, ToolCalling, detect_format


def calling_for(body: p.ChatCompletionRequest, llm: LLM) -> ToolCalling | None:
    """The request's tool calling (None: a plain chat, with no tools, tool_choice or tool turns)."""
    if not body.tools and body.tool_choice is None and not body.has_tool_history:
        return None
    parallel = body.parallel_tool_calls is not False
    return ToolCalling(detect_format(llm.tokenizer.chat_template), tuple(body.function_tools()),
                       body.tool_choice_value(), is_parallel=parallel)


def constrained(params: SamplingParams, calling: ToolCalling | None, llm: LLM,
                limits: RequestLimits) -> SamplingParams:
    """`params` with the grammar that holds the answer to the tools (unchanged where none applies)."""
    lark = calling.grammar(llm.tokenizer.special_token_ids) if calling is not None else None
    if lark is None:
        return params
    if len(lark) > limits.max_grammar_chars:
        raise InvalidParameterError(
            f"the tools make a call grammar of {len(lark)} characters, over the limit of "
            f"{limits.max_grammar_chars}; send fewer tools or smaller parameter schemas", param="tools")
    return dataclasses.replace(params, grammar=GrammarSpec("lark", lark, param="tools"))


def prompt_ids(llm: LLM, messages: list[dict[str, Any]], calling: ToolCalling | None) -> list[int]:
    """The chat prompt: through the tool format's rendering when the request uses tools."""
    if calling is None:
        return llm.prompt_ids(messages)
    rendered, tools = calling.render(messages)
    return llm.prompt_ids(rendered, tools=tools)


def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    """OpenAI's "tool_calls" for an answer that ended on its own after calls; else the engine's."""
    return "tool_calls" if has_calls and reason == "stop" else reason


def message(calling: ToolCalling | None, text: str) -> r.ChatResponseMessage:
    """A whole answer as the response's message: its content, and its calls if it made any."""
    content, calls = calling.split(text) if calling is not None else (text, [])
    if not calls:
        return r.ChatResponseMessage(content=content)
    return r.ChatResponseMessage(content=content or None, tool_calls=[_tool_call(call) for call in calls])


def _tool_call(call: ParsedCall) -> p.ToolCall:
    assert call.name is not None, "the parser hands over complete calls only"
    return p.ToolCall(id=call.id, function=p.FunctionCall(name=call.name, arguments=call.arguments))


class StreamedCalls:
    """One choice's streamed answer split into content and call deltas as it comes."""

    def __init__(self, calling: ToolCalling | None) -> None:
        self._parser = calling.parser() if calling is not None else None

    @property
    def has_calls(self) -> bool:
        return self._parser is not None and bool(self._parser.calls)

    def delta(self, new_text: str, *, final: bool) -> r.ChatDelta:
        """The delta for `new_text` (`final`: the answer's last text); empty when nothing is settled."""
        if self._parser is None:
            return r.ChatDelta(content=new_text or None)
        content, deltas = self._parser.feed(new_text, final=final)
        calls = [_tool_call_delta(d) for d in deltas]
        return r.ChatDelta(content=content or None, tool_calls=calls or None)


def _tool_call_delta(delta: CallDelta) -> r.ToolCallDelta:
    if delta.name is not None:  # the call's first piece: its id, type and name
        return r.ToolCallDelta(index=delta.index, id=delta.id, type="function",
                               function=r.FunctionDelta(name=delta.name, arguments=delta.arguments))
    return r.ToolCallDelta(index=delta.index, function=r.FunctionDelta(arguments=delta.arguments))
