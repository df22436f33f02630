"""C4-style line filters: lines that are not prose (no terminal punctuation, too short,
policy, cookie and footer boilerplate) are removed from the text; a document left too short, or
one whose removed lines held most of its characters (a page of navigation and footers around a
sentence or two), is dropped.

Owns line-level editing, adapted per language (a Chinese line's length is counted in characters,
an English line's in words; Chinese terminal punctuation counts; a Chinese paragraph is often one
line that ends with a signature). Knows nothing about other steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from luodi.corpus.document import Document, Drop, units
from luodi.corpus.rules import PerLanguage, for_language

# After NFKC, full-width ！？：； are their ASCII forms; 。 and … stay.
_TERMINAL = (".", "!", "?", '"', "'", "”", "’", "。", "…", "」", "』", ")", "）", ":")
# C4's policy markers, and the footer markers of English and Chinese sites: copyright notices,
# company registration, and the ICP licence and public-security filing every Chinese site shows.
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
           "all rights reserved", "使用条款", "隐私政策", "版权所有", "cookie",
           "©", "registered in england", "保留所有权利", "icp备", "公网安备")
# A sentence ends at a CJK stop, or at . ! ? before a space (not the dot of a number or address).
_SENTENCE_END = re.compile(r"[。！？…]|[.!?](?=\s)")


@dataclass(frozen=True, slots=True)
class C4Lines:
    """Keeps only prose lines; drops the document when fewer than `min_units` units remain, or
    when the removed lines held more than `max_removed_char_share` of its characters."""

    name: ClassVar[str] = "c4_lines"
    require_terminal_punctuation: bool = True
    max_signature_share: float = 0.2
    min_line_units: PerLanguage = field(default_factory=lambda: {"zh": 5, "default": 3})
    min_units: PerLanguage = field(default_factory=lambda: {"zh": 50, "default": 30})
    min_lines: int = 1
    max_removed_char_share: float = 0.4

    def __call__(self, doc: Document) -> Document | Drop:
        lines = doc.text.split("\n")
        kept = [line for line in lines if not line.strip() or self.is_prose(line, doc.language)]
        text = "\n".join(kept).strip()
        while "\n\n\n" in text:
            text = text.replace("\n\n\n", "\n\n")
        num_lines = sum(1 for line in kept if line.strip())
        if num_lines < self.min_lines or len(units(text)) < for_language(self.min_units, doc.language):
            return Drop("too_short_after_line_filter")
        if removed_char_share(doc.text, text) > self.max_removed_char_share:
            return Drop("mostly_boilerplate")
        removed = sum(1 for line in lines if line.strip()) - num_lines
        return doc.with_text(text).with_stats(self.name, {"lines_removed": removed})

    def is_prose(self, line: str, language: str | None) -> bool:
        stripped = line.strip()
        if self.require_terminal_punctuation and not self.ends_sentence(stripped):
            return False
        if len(units(stripped)) < for_language(self.min_line_units, language):
            return False
        lowered = stripped.lower()
        return not any(marker in lowered for marker in _POLICY)

    def ends_sentence(self, line: str) -> bool:
        """Ends with terminal punctuation, or with a short signature after its last sentence
        (特此通知。城南供电所): the unpunctuated tail is at most `max_signature_share` of its units."""
        if line.endswith(_TERMINAL):
            return True
        ends = list(_SENTENCE_END.finditer(line))
        if not ends:
            return False
        tail = len(units(line[ends[-1].end():]))
        return tail <= self.max_signature_share * len(units(line))


def removed_char_share(before: str, after: str) -> float:
    """Share of the text's non-space characters that the line filter removed."""
    total = sum(1 for c in before if not c.isspace())
    return 1.0 - sum(1 for c in after if not c.isspace()) / total if total else 0.0
