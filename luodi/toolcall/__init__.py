"""Tool (function) calling: how a model family writes a call, the grammar that enforces it, parsing it back.

Owns: the tool definitions a request carries (`Tool`, checked at the boundary), the call formats
(`formats`), the Lark grammar for a request's tools and `tool_choice` (`grammar`), and turning the
generated text into calls, whole or as streamed deltas (`parsing`).

Must not know: HTTP, the OpenAI wire types, the engine. It knows chat templates only as text (to
declare which format a template writes) and messages as the dicts templates render.
"""

from luodi.toolcall.formats import FORMATS, ToolFormat, detect_format, render_messages
from luodi.toolcall.grammar import tool_call_lark
from luodi.toolcall.parsing import CallDelta, ParsedCall, ToolCallParser, parse_calls
from luodi.toolcall.tools import Tool, ToolChoice, ToolError, check_tool_choice, parse_tools

__all__ = [
    "FORMATS", "CallDelta", "ParsedCall", "Tool", "ToolCallParser", "ToolChoice", "ToolError", "ToolFormat",
    "check_tool_choice", "detect_format", "parse_calls", "parse_tools", "render_messages", "tool_call_lark",
]
