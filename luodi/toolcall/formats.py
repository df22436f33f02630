"""Call formats: how each model family writes tool calls, and rendering tools and call history for it.

Owns `ToolFormat` (the literal text around a call: Hermes / Qwen `<tool_call>`, Llama 3.x JSON,
Mistral `[TOOL_CALLS]`, and Luodi's generic format), picking one from a chat template's text
(`detect_format`: the template declares its format by the call syntax it writes, so no model names
are guessed), and `render_messages`: an OpenAI-shaped history made into what the template renders.

The generic format, for templates that know nothing of tools (SmolLM2's): the tools are described
in the system prompt, a call is written as in Hermes,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(several calls one after another, a newline between them), and each tool result comes back as a
user turn `<tool_response>\\n{"name": ..., "content": ...}\\n</tool_response>`.

Must not know: HTTP, the engine, tokenization.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from luodi.toolcall.tools import Tool


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """A block of calls is `block_open + call (separator call)* + block_close`; one call is
    `call_open + json(name) + ', "<args_key>": ' + arguments + call_close`. `trigger` (a prefix of
    `block_open + call_open`) is where a model answering freely switches into a call."""

    name: str
    trigger: str
    call_open: str
    call_close: str
    block_open: str = ""
    block_close: str = ""
    separator: str = "\n"
    args_key: str = "arguments"
    max_calls: int | None = None  # None: any number of calls in one answer
    template_renders_tools: bool = True  # False: the tools go into the system prompt (generic)

    def __post_init__(self) -> None:
        assert (self.block_open + self.call_open).startswith(self.trigger), self.name

    @property
    def args_open(self) -> str:
        return f', "{self.args_key}": '

    def call_text(self, name: str, arguments: str) -> str:
        return self.call_open + json.dumps(name, ensure_ascii=False) + self.args_open + arguments + self.call_close

    def block_text(self, calls: Sequence[tuple[str, str]]) -> str:
        """The text of an answer making `calls` ((name, arguments JSON) pairs), as the model writes it."""
        return self.block_open + self.separator.join(self.call_text(n, a) for n, a in calls) + self.block_close


HERMES = ToolFormat("hermes", trigger="<tool_call>", call_open='<tool_call>\n{"name": ', call_close="}\n</tool_call>")
LLAMA3 = ToolFormat("llama3", trigger='{"name": ', call_open='{"name": ', call_close="}", args_key="parameters",
                    max_calls=1)  # Llama 3.1's template refuses more than one call per turn
MISTRAL = ToolFormat("mistral", trigger="[TOOL_CALLS]", block_open="[TOOL_CALLS][", block_close="]",
                     call_open='{"name": ', call_close="}", separator=", ")
GENERIC = ToolFormat("generic", trigger="<tool_call>", call_open='<tool_call>\n{"name": ',
                     call_close="}\n</tool_call>", template_renders_tools=False)
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, GENERIC)}


def detect_format(chat_template: str | None) -> ToolFormat:
    """The format a chat template writes calls in, read from the call syntax it spells; generic else."""
    text = chat_template or ""
    if "tools" not in text:
        return GENERIC
    if "[TOOL_CALLS]" in text:
        return MISTRAL
    if "<tool_call>" in text:
        return HERMES
    if "<|start_header_id|>" in text and '"parameters": ' in text:
        return LLAMA3
    return GENERIC


def render_messages(fmt: ToolFormat, messages: list[dict[str, Any]], tools: Sequence[Tool]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, the template's `tools` variable) for an OpenAI-shaped history: assistant turns may
    hold `tool_calls` (arguments as JSON text), `tool` turns answer them by `tool_call_id`."""
    if fmt.template_renders_tools:
        rendered = [_template_message(m) for m in messages]
        return rendered, [t.definition() for t in tools] or None
    return _generic_messages(fmt, messages, tools), None


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    # HF templates take arguments as a mapping (`| tojson`); OpenAI sends them as JSON text.
    calls = message.get("tool_calls")
    if not calls:
        return message
    hf_calls = [{**call, "function": {**call["function"], "arguments": _arguments(call["function"])}}
                for call in calls]
    return {**message, "content": message.get("content") or "", "tool_calls": hf_calls}


def _arguments(function: dict[str, Any]) -> Any:
    arguments = function.get("arguments") or "{}"
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return arguments  # not JSON: the template shows it as the text it is


def _generic_messages(fmt: ToolFormat, messages: list[dict[str, Any]], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or () if "id" in c}
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            name = message.get("name") or names.get(message.get("tool_call_id", ""), "")
            response = json.dumps({"name": name, "content": message.get("content") or ""}, ensure_ascii=False)
            text = f"<tool_response>\n{response}\n</tool_response>"
            if out and out[-1].get("is_tool_response"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + text}
            else:
                out.append({"role": "user", "content": text, "is_tool_response": True})
        elif message.get("tool_calls"):
            calls = [(c["function"]["name"], _compact(c["function"].get("arguments") or "{}"))
                     for c in message["tool_calls"]]
            prefix = (message.get("content") or "").strip()
            out.append({"role": "assistant", "content": (prefix + "\n" if prefix else "") + fmt.block_text(calls)})
        else:
            out.append(message)
    out = [{k: v for k, v in m.items() if k != "is_tool_response"} for m in out]
    return _with_tools_prompt(out, tools) if tools else out


def _compact(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return arguments


def generic_tools_prompt(tools: Sequence[Tool]) -> str:
    listed = "\n".join(json.dumps(t.definition()["function"], ensure_ascii=False) for t in tools)
    return ("You can call functions. They are listed here as JSON:\n<tools>\n" + listed + "\n</tools>\n"
            "To call one, answer with only:\n<tool_call>\n"
            '{"name": "<function name>", "arguments": <the arguments as a JSON object>}\n</tool_call>\n'
            "Each result comes back as <tool_response>...</tool_response>; then answer the user.")


def _with_tools_prompt(messages: list[dict[str, Any]], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    prompt = generic_tools_prompt(tools)
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{prompt}".lstrip()}] + messages[1:]
    return [{"role": "system", "content": prompt}] + messages
