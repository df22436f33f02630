"""A request's tools, checked where they enter: a valid name, parameters that are a JSON Schema.

Owns `Tool` (one function a model may call), `ToolChoice` (`none` / `auto` / `required` / a named
function) and their checks; each failure is a `ToolError` (a 400) naming the tool and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from luodi.errors import InvalidParameterError

# OpenAI's rule for function names.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ToolError(InvalidParameterError):
    """A tool definition or tool choice the request got wrong."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str = ""
    parameters_json: str = json.dumps(_EMPTY_PARAMETERS)  # the JSON Schema of the arguments, as JSON text

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self.parameters_json)

    def definition(self) -> dict[str, Any]:
        """The OpenAI-shaped definition chat templates render (`{"type": "function", "function": ...}`)."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """`mode` is none, auto or required; `name` set means that function, and only it, is called."""

    mode: str = "auto"
    name: str | None = None

    @property
    def calls_required(self) -> bool:
        return self.mode == "required" or self.name is not None


def parse_tools(functions: Sequence[tuple[str, str | None, dict[str, Any] | None]]) -> list[Tool]:
    """Tools from (name, description, parameters) triples; `ToolError` for a bad name, a duplicate,
    or parameters that are not a valid JSON Schema of an object."""
    tools: list[Tool] = []
    for index, (name, description, parameters) in enumerate(functions):
        param = f"tools.{index}.function"
        if not _NAME.match(name):
            raise ToolError(f"tool name {name!r} is invalid: use 1-64 letters, digits, '_' or '-'",
                            param=f"{param}.name")
        if any(t.name == name for t in tools):
            raise ToolError(f"tool {name!r} is defined twice; give each function a distinct name", param=param)
        schema = _EMPTY_PARAMETERS if parameters is None else parameters
        _check_schema(name, schema, f"{param}.parameters")
        schema = {"type": "object", **schema}  # no type said: still an object (arguments always are one)
        tools.append(Tool(name, description or "", json.dumps(schema, ensure_ascii=False)))
    return tools


def tools_from_definitions(definitions: Any) -> list[Tool]:
    """Tools from OpenAI-shaped definitions (`[{"type": "function", "function": {"name", ...}}]`), as
    read from a file; `ToolError` naming the entry that is not one."""
    if not isinstance(definitions, list):
        raise ToolError("tools must be a JSON list of {\"type\": \"function\", \"function\": {...}} objects",
                        param="tools")
    functions = []
    for index, definition in enumerate(definitions):
        function = definition.get("function") if isinstance(definition, dict) else None
        if definition.get("type", "function") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str):
            raise ToolError(f"tools[{index}] is not a function definition: give "
                            '{"type": "function", "function": {"name": ..., "parameters": {...}}}',
                            param=f"tools.{index}")
        functions.append((function["name"], function.get("description"), function.get("parameters")))
    return parse_tools(functions)


def _check_schema(name: str, schema: Any, param: str) -> None:
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - the structured extra installs it
        raise ToolError("tool calling needs jsonschema: pip install 'luodi[structured]'", param=param) from exc
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ToolError(f"the parameters of tool {name!r} must be a JSON Schema of type object", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ToolError(f"the parameters of tool {name!r} are not a valid JSON Schema: {exc.message} "
                        f"(at {'/'.join(map(str, exc.path)) or 'the top'})", param=param) from None


def check_tool_choice(choice: ToolChoice, tools: Sequence[Tool]) -> None:
    """`ToolError` when the choice needs tools there are none of, or names an unknown function."""
    if choice.mode not in ("none", "auto", "required"):
        raise ToolError(f"tool_choice {choice.mode!r} is unknown; use none, auto, required or a named function",
                        param="tool_choice")
    if choice.calls_required and not tools:
        raise ToolError("tool_choice asks for a call but the request has no tools; send tools", param="tool_choice")
    if choice.name is not None and all(t.name != choice.name for t in tools):
        known = ", ".join(t.name for t in tools)
        raise ToolError(f"tool_choice names function {choice.name!r}, which is not among the tools ({known})",
                        param="tool_choice")


def validate_arguments(tool: Tool, arguments: str) -> str | None:
    """None if `arguments` (JSON text) validate against the tool's parameters, else why not."""
    import jsonschema

    try:
        value = json.loads(arguments)
    except ValueError as exc:
        return f"not JSON: {exc}"
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(tool.parameters)(tool.parameters).iter_errors(value))
    return None if error is None else error.message
