"""A corpus document and what a step may answer about it.

Owns the `Document` seam (id, text, metadata, per-stage stats), the `Drop` verdict a step
returns instead of a document, and how text is counted per language: Chinese (and other CJK
scripts) in characters, everything else in words. Knows nothing about steps or files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

# A CJK ideograph (or kana / hangul syllable) is one unit; any other run of letters or digits is one word.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_UNIT = re.compile(rf"[{_CJK}]|[^\W{_CJK}_]+")
_CJK_CHAR = re.compile(rf"[{_CJK}]")


@dataclass(frozen=True, slots=True)
class Document:
    """One document: its id as given, its current text, the input's other fields, and what
    each step found (`stats`, by step name)."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def with_text(self, text: str) -> Document:
        return replace(self, text=text)

    def with_stats(self, step: str, value: Any) -> Document:
        return replace(self, stats={**self.stats, step: value})

    @property
    def language(self) -> str | None:
        found = self.stats.get("language")
        return found["language"] if isinstance(found, dict) else None


@dataclass(frozen=True, slots=True)
class Drop:
    """A step's verdict that a document leaves the corpus, and why (a short snake_case reason)."""

    reason: str
    language: str | None = None  # the language step tells which language it refused


def units(text: str) -> list[str]:
    """The text's countable units: each CJK character, each other word (letters or digits)."""
    return _UNIT.findall(text)


def is_cjk_language(language: str | None) -> bool:
    return language in {"zh", "ja", "ko", "wuu", "yue"}


def cjk_fraction(text: str) -> float:
    """Share of the text's units that are CJK characters (0 for an empty text)."""
    found = units(text)
    return sum(1 for u in found if _CJK_CHAR.fullmatch(u)) / len(found) if found else 0.0
