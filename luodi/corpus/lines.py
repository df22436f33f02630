"""C4-style line filters: lines that are not prose (no terminal punctuation, too short,
policy and cookie boilerplate) are removed from the text; a document left too short is dropped.

Owns line-level editing, adapted per language (a Chinese line's length is counted in characters,
an English line's in words; Chinese terminal punctuation counts). Knows nothing about other steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from luodi.corpus.document import Document, Drop, units
from luodi.corpus.rules import PerLanguage, for_language

# After NFKC, full-width ！？：； are their ASCII forms; 。 and … stay.
_TERMINAL = (".", "!", "?", '"', "'", "”", "’", "。", "…", "」", "』", ")", "）", ":")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
           "all rights reserved", "使用条款", "隐私政策", "版权所有", "cookie")


@dataclass(frozen=True, slots=True)
class C4Lines:
    """Keeps only prose lines; drops the document when fewer than `min_units` units remain."""

    name: ClassVar[str] = "c4_lines"
    require_terminal_punctuation: bool = True
    min_line_units: PerLanguage = field(default_factory=lambda: {"zh": 5, "default": 3})
    min_units: PerLanguage = field(default_factory=lambda: {"zh": 50, "default": 30})
    min_lines: int = 1

    def __call__(self, doc: Document) -> Document | Drop:
        lines = doc.text.split("\n")
        kept = [line for line in lines if not line.strip() or self.is_prose(line, doc.language)]
        text = "\n".join(kept).strip()
        while "\n\n\n" in text:
            text = text.replace("\n\n\n", "\n\n")
        num_lines = sum(1 for line in kept if line.strip())
        if num_lines < self.min_lines or len(units(text)) < for_language(self.min_units, doc.language):
            return Drop("too_short_after_line_filter")
        removed = sum(1 for line in lines if line.strip()) - num_lines
        return doc.with_text(text).with_stats(self.name, {"lines_removed": removed})

    def is_prose(self, line: str, language: str | None) -> bool:
        stripped = line.strip()
        if self.require_terminal_punctuation and not stripped.endswith(_TERMINAL):
            return False
        if len(units(stripped)) < for_language(self.min_line_units, language):
            return False
        lowered = stripped.lower()
        return not any(marker in lowered for marker in _POLICY)
