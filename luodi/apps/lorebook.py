"""A character's lorebook (the card's `character_book`): which entries a conversation calls up.

Owns the V2 spec's matching rules: an enabled entry is injected when one of its `keys` occurs in
the last `scan_depth` messages (and, if `selective`, one of its `secondary_keys` too); `constant`
entries always are. Keys match case-insensitively unless `case_sensitive`; a key that begins and
ends with a letter or digit matches whole words only (so "art" does not fire on "party"), other
keys (CJK text, punctuation) as substrings; a key written `/pattern/flags` is a regular expression.
Chosen entries fill `token_budget` by `priority` (highest first) and are written in
`insertion_order` (lowest first).

Must not know: prompts, models (token counting is a function handed in).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SCAN_DEPTH = 2  # messages, counting the newest user message (SillyTavern's default)
DEFAULT_TOKEN_BUDGET = 512


@dataclass(frozen=True, slots=True)
class LoreEntry:
    keys: tuple[str, ...]
    content: str
    secondary_keys: tuple[str, ...] = ()
    is_selective: bool = False
    is_constant: bool = False
    is_case_sensitive: bool = False
    insertion_order: int = 0
    priority: int = 0


def entries_of(book: dict[str, Any] | None) -> list[LoreEntry]:
    """The enabled entries of a card's `character_book`."""
    entries = []
    for raw in (book or {}).get("entries") or []:
        if not isinstance(raw, dict) or raw.get("enabled") is False or not isinstance(raw.get("content"), str):
            continue
        entries.append(LoreEntry(
            keys=_strings(raw.get("keys")), content=raw["content"], secondary_keys=_strings(raw.get("secondary_keys")),
            is_selective=bool(raw.get("selective")), is_constant=bool(raw.get("constant")),
            is_case_sensitive=bool(raw.get("case_sensitive")), insertion_order=_int(raw.get("insertion_order")),
            priority=_int(raw.get("priority"))))
    return entries


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str) and v.strip()) if isinstance(value, list) else ()


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def key_occurs(key: str, text: str, is_case_sensitive: bool = False) -> bool:
    regex = re.fullmatch(r"/(.+)/([imsx]*)", key)
    if regex:
        flags = sum(getattr(re, f.upper()) for f in regex.group(2))
        try:
            return re.search(regex.group(1), text, flags) is not None
        except re.error:
            return False  # a broken pattern in a card matches nothing rather than failing the chat
    flags = 0 if is_case_sensitive else re.IGNORECASE
    pattern = re.escape(key.strip())
    if key.strip()[0].isalnum() and key.strip()[-1].isalnum() and key.strip().isascii():
        pattern = rf"\b{pattern}\b"
    return re.search(pattern, text, flags) is not None


def is_triggered(entry: LoreEntry, text: str) -> bool:
    if entry.is_constant:
        return True
    if not any(key_occurs(k, text, entry.is_case_sensitive) for k in entry.keys):
        return False
    if entry.is_selective and entry.secondary_keys:
        return any(key_occurs(k, text, entry.is_case_sensitive) for k in entry.secondary_keys)
    return True


def active_entries(book: dict[str, Any] | None, recent_messages: Sequence[str],
                   count_tokens: Callable[[str], int]) -> list[LoreEntry]:
    """The entries the recent messages call up, within the book's token budget, in insertion order."""
    book = book or {}
    depth = _int(book.get("scan_depth")) or DEFAULT_SCAN_DEPTH
    budget = _int(book.get("token_budget")) or DEFAULT_TOKEN_BUDGET
    text = "\n".join(recent_messages[-depth:])
    triggered = [e for e in entries_of(book) if is_triggered(e, text)]
    chosen, spent = [], 0
    for entry in sorted(triggered, key=lambda e: (not e.is_constant, -e.priority, e.insertion_order)):
        cost = count_tokens(entry.content)
        if spent + cost <= budget:
            chosen.append(entry)
            spent += cost
    return sorted(chosen, key=lambda e: e.insertion_order)
