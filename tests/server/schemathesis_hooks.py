"""Schemathesis hooks for tests/server/test_schema.py: every generated string, anywhere in a JSON
body, carries a lone UTF-16 surrogate. JSON can hold one (a `"\\ud800"` escape) though
it is not text; Hypothesis never draws one by itself, so without this hook no such request is sent."""

from __future__ import annotations

from typing import Any

import schemathesis

LONE_SURROGATE = "\ud800"


def with_surrogates(value: Any) -> Any:
    """`value` with a lone surrogate appended to every string in it, keys included."""
    if isinstance(value, str):
        return value + LONE_SURROGATE
    if isinstance(value, dict):
        return {with_surrogates(key): with_surrogates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_surrogates(item) for item in value]
    return value


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    return with_surrogates(body)
