"""`ToolCalling`: what one conversation turn asks of tool calling, in the model's call format.

Owns putting the pieces together for a caller (the server's chat route, the CLI's chat): the
prompt's messages and the template's `tools` variable, the grammar that holds the answer to the
tools, and the parser that reads the answer back. With `tool_choice` none nothing is enforced or
parsed, and the tools are left out of the prompt (a model shown them writes calls as text); a
history that holds calls and results is rendered all the same.

Must not know: HTTP, the OpenAI wire types, the engine (callers wrap the grammar text in theirs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from luodi.toolcall.formats import ToolFormat, render_messages
from luodi.toolcall.grammar import tool_call_lark
from luodi.toolcall.parsing import ParsedCall, ToolCallParser, split_answer
from luodi.toolcall.tools import Tool, ToolChoice, check_tool_choice


@dataclass(frozen=True, slots=True)
class ToolCalling:
    fmt: ToolFormat
    tools: tuple[Tool, ...]
    choice: ToolChoice = ToolChoice()
    is_parallel: bool = True  # False: at most one call per answer (`parallel_tool_calls=false`)

    def __post_init__(self) -> None:
        check_tool_choice(self.choice, self.tools)

    @property
    def is_active(self) -> bool:
        """True when the answer may hold calls: there are tools and the choice is not none."""
        return bool(self.tools) and self.choice.mode != "none"

    def render(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """(messages for the chat template, its `tools` variable) for an OpenAI-shaped history."""
        return render_messages(self.fmt, messages, self.tools if self.is_active else ())

    def grammar(self, special_tokens: Mapping[str, int] | None = None) -> str | None:
        """The Lark grammar the answer must match (None: nothing enforced)."""
        if not self.is_active:
            return None
        return tool_call_lark(self.fmt, self.tools, self.choice, parallel=self.is_parallel,
                              special_tokens=special_tokens)

    def parser(self) -> ToolCallParser | None:
        """A stream parser for one answer (None: the answer is content only)."""
        return ToolCallParser(self.fmt, self.tools) if self.is_active else None

    def split(self, text: str) -> tuple[str, list[ParsedCall]]:
        """(content, calls) of a whole answer."""
        return split_answer(self.fmt, self.tools, text) if self.is_active else (text, [])
