"""Which replica holds a prompt's prefix: hash chains of the prompt's text, remembered per replica.

A replica's prefix cache holds the KV blocks of prompts it recently computed. The gateway cannot
see tokens (it holds no tokenizer) but it sees every prompt it routes, so it keeps, per replica,
the chained hashes of each routed prompt's text in fixed-size chunks — hash i covers chunks 0..i,
so two prompts share hash i exactly when they share their first i + 1 chunks — and evicts the
least recently used as the replica's cache would. This is the approximate tree SGLang's router
keeps; it is exact about what was sent where, and approximate only about what the replica's
cache has since evicted (bounded here by the replica's KV capacity). A replica that restarts
starts empty (`clear`).

Must not know HTTP or how routing weighs a match.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

CHUNK_CHARS = 64  # about 16-20 tokens: a KV block's worth of text
CHARS_PER_TOKEN = 3.5  # to size the remembered text from a replica's KV capacity in tokens


def prompt_text(body: dict[str, Any]) -> str:
    """The text that decides a request's prompt tokens, in a canonical form: the chat messages
    (role and content, in order; the model's template is a function of them) or the prompt."""
    if isinstance(body.get("messages"), list):
        parts = []
        for message in body["messages"]:
            if isinstance(message, dict):
                content = message.get("content")
                text = content if isinstance(content, str) else json.dumps(content, sort_keys=True, ensure_ascii=False)
                parts.append(f"{message.get('role')}\x1f{text}\x1e")
        return "".join(parts)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def chain_hashes(text: str, chunk_chars: int = CHUNK_CHARS) -> list[bytes]:
    """One hash per whole chunk of `text`, each covering every chunk before it."""
    hashes, previous = [], b""
    for start in range(0, len(text) - chunk_chars + 1, chunk_chars):
        chunk = text[start : start + chunk_chars].encode("utf-8", "surrogatepass")  # JSON may carry a lone surrogate
        previous = hashlib.blake2b(previous + chunk, digest_size=8).digest()
        hashes.append(previous)
    return hashes


class PrefixMemory:
    """The chunk hashes one replica probably still caches, least recently used first."""

    def __init__(self, capacity_chunks: int = 4096) -> None:
        self.capacity = capacity_chunks
        self._hashes: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hashes)

    def matched_chunks(self, hashes: list[bytes]) -> int:
        """How many leading chunks of a prompt this replica holds."""
        n = 0
        for h in hashes:
            if h not in self._hashes:
                break
            n += 1
        return n

    def add(self, hashes: list[bytes]) -> None:
        for h in hashes:
            self._hashes[h] = None
            self._hashes.move_to_end(h)
        while len(self._hashes) > self.capacity:
            self._hashes.popitem(last=False)

    def resize_for(self, kv_tokens: int) -> None:
        """Remember about as much text as the replica's KV cache holds tokens."""
        self.capacity = max(64, int(kv_tokens * CHARS_PER_TOKEN / CHUNK_CHARS))

    def clear(self) -> None:
        self._hashes.clear()
