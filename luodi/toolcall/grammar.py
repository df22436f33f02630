"""The Lark grammar (llguidance's dialect) that makes a model's answer a well-formed call.

Owns `tool_call_lark`: for a format, the request's tools and its `tool_choice`, a grammar in which
every call names one of the tools and its arguments match that tool's parameters (`%json`).
`required` and a named function: the answer is calls only. `auto`: free text, or — once the model
writes the format's trigger (a lazy lexeme: it ends the text at the trigger's first occurrence) —
calls only, to the end. `parallel_tool_calls=false` (or a format that allows one call) means one.

JSON inside a call is compact (no free whitespace): a small model given the freedom writes
whitespace forever. Objects that list their properties are closed (`additionalProperties: false`
unless the schema says otherwise): JSON Schema leaves them open, and a small model then invents
properties until max_tokens, while a function has no use for arguments it does not declare. The
arguments still validate against the schema as given, which allows more.

Must not know: tokenizers beyond the special tokens' ids it is given, the engine, HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from luodi.toolcall.formats import ToolFormat
from luodi.toolcall.tools import Tool, ToolChoice

_COMPACT = {"whitespace_flexible": False}


def tool_call_lark(fmt: ToolFormat, tools: Sequence[Tool], choice: ToolChoice, *, parallel: bool = True,
                   special_tokens: Mapping[str, int] | None = None) -> str | None:
    """The grammar, or None where nothing is enforced (`none`, or no tools).

    `special_tokens` maps the spelling of each of the tokenizer's special tokens to its id: a
    format's literal that is one (Mistral's `[TOOL_CALLS]`) must be that token, not its spelling.
    """
    if choice.mode == "none" or not tools:
        return None
    specials = dict(special_tokens or {})
    chosen = [t for t in tools if choice.name is None or t.name == choice.name]
    one_call = not parallel or choice.name is not None or fmt.max_calls == 1
    more = "" if one_call else f" ({_literal(fmt.separator, specials)} call)*"
    lines = ["%llguidance {}"]
    close = _literal(fmt.block_close, specials)
    if choice.calls_required:
        lines.append(f"start: {_literal(fmt.block_open, specials)} call{more} {close}")
    else:
        head = (fmt.block_open + fmt.call_open)[len(fmt.trigger):]
        lines.append(f"start: TEXT | trigger {_literal(head, specials)} function{more} {close}")
        if fmt.trigger in specials:  # text never holds a special token: no lazy lexeme needed
            lines.append(f"trigger: TEXT {_literal(fmt.trigger, specials)}")
        else:
            lines.append(f"trigger[lazy]: TEXT {_literal(fmt.trigger, specials)}")
        lines.append(r"TEXT: /(.|\n)*/")
    lines.append(f"call: {_literal(fmt.call_open, specials)} function")
    lines.append("function: " + " | ".join(f"f{i}" for i in range(len(chosen))))
    for index, tool in enumerate(chosen):
        schema = {**closed_objects(tool.parameters), "x-guidance": _COMPACT}
        name = json.dumps(tool.name) + fmt.args_open
        lines.append(f"f{index}: {_literal(name, specials)} %json {json.dumps(schema, ensure_ascii=False)} "
                     f"{_literal(fmt.call_close, specials)}")
    return "\n".join(lines) + "\n"


# Where subschemas sit that describe a value of their own (closing one there closes only that value);
# allOf is left alone: its parts describe the same object, and closing each would forbid the others' keys.
_NAMED_SUBSCHEMAS = ("properties", "$defs", "definitions")
_LISTED_SUBSCHEMAS = ("anyOf", "oneOf", "prefixItems")


def closed_objects(schema: Any) -> Any:
    """`schema` with each object schema that lists `properties` and says nothing of other keys closed."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and not {"additionalProperties", "patternProperties", "unevaluatedProperties"} & set(out):
        out["additionalProperties"] = False
    for key in _NAMED_SUBSCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    for key in _LISTED_SUBSCHEMAS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(sub) for sub in out[key]]
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    return out


def _literal(text: str, specials: Mapping[str, int]) -> str:
    """`text` as Lark: quoted pieces, with each special token's spelling as `<[id]>` (that token)."""
    if not text:
        return ""
    spelled = [s for s in specials if s and s in text]
    if not spelled:
        return json.dumps(text, ensure_ascii=False)
    pattern = re.compile("(" + "|".join(map(re.escape, sorted(spelled, key=len, reverse=True))) + ")")
    pieces = pattern.split(text)
    out = [f"<[{specials[p]}]>" if i % 2 else json.dumps(p, ensure_ascii=False) for i, p in enumerate(pieces) if p]
    return " ".join(out)
