"""`RequestLimits`: the caps on what one request may ask of the server beyond its body size.

Owns the numbers and why each is what it is; `protocol` checks a request against them and
`ServerConfig` carries them. Must not know HTTP, the engine or the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Caps on what a request may ask beyond its body size; each refusal is a 400 naming the cap."""

    # Every stop string is searched for in the text after every new token, on the one engine thread:
    # 400k of them cut another request's decode from ~75 to 16 tok/s. OpenAI allows 4; 16 leaves
    # room for every turn marker a chat format has, at a cost no one notices.
    max_stop_strings: int = 16
    max_stop_chars: int = 256  # each; the text kept back for matching is as long as the longest
    max_stop_token_ids: int = 64
    max_logit_bias: int = 1024  # entries; each is a write into every step's logits row
    max_messages: int = 1024  # turns in one chat; their text is bounded by the body size
    # Choices (n) and completions prompts: each choice is a running sequence, admitted like a
    # request, so the server's queue bounds them too; these keep one request from taking it all.
    max_n: int = 16
    max_prompts: int = 64
    # A `response_format` schema or `structured_outputs` grammar: compiling costs ~1 ms per KB on
    # the request's thread, and the grammar backend also caps it (time and grammar size).
    max_grammar_chars: int = 100_000
    # Tools: their definitions go into the prompt and their schemas into the call grammar, so their
    # JSON is capped as a grammar is; 128 tools is OpenAI's own limit.
    max_tools: int = 128
    max_tools_chars: int = 100_000
