"""Tool (function) calling: how a model family writes a call, the grammar that enforces it, parsing it back.

Owns: the tool definitions a request carries (`Tool`, checked at the boundary), the call formats
(`formats`), the Lark grammar for a request's tools and `tool_choice` (`grammar`), turning the
generated text into calls, whole or as streamed deltas (`parsing`), and a turn's use of all three
(`calling.ToolCalling`).

Must not know: HTTP, the OpenAI wire types, the engine. It knows chat templates only as text (to
declare which format a template writes) and messages as the dicts templates render.
"""

from luodi.toolcall.calling import ToolCalling
from luodi.toolcall.formats import FORMATS, ToolFormat, detect_format, render_messages
from luodi.toolcall.grammar import tool_call_lark
from luodi.toolcall.parsing import CallDelta, ParsedCall, ToolCallParser, parse_calls, split_answer
from luodi.toolcall.tools import (Tool, ToolChoice, ToolError, check_tool_choice, parse_tools, tools_from_definitions,
                                  validate_arguments)

__all__ = [
    "FORMATS", "CallDelta", "ParsedCall", "Tool", "ToolCallParser", "ToolCalling", "ToolChoice", "ToolError",
    "ToolFormat", "check_tool_choice", "detect_format", "parse_calls", "parse_tools", "render_messages",
    "split_answer", "tool_call_lark", "tools_from_definitions", "validate_arguments",
]
