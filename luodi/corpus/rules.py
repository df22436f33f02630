"""Rule filters over a whole document: length, Gopher quality and repetition, symbol and digit
ratios, markup and code leftovers.

Owns the rules and their per-language reading: Chinese is counted in characters, English in
words (`document.units`), and a threshold may be one number or a mapping by language with a
`default`. Thresholds follow Gopher (Rae et al. 2021, appendix A) and C4 (Raffel et al. 2020);
the recipe names each. Knows nothing about files or other steps.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from luodi.corpus.document import Document, Drop, is_cjk_language, units

PerLanguage = float | dict[str, float]


def for_language(value: Any, language: str | None) -> Any:
    """`value` itself, or its entry for `language` (else its `default`) when it is a mapping."""
    if isinstance(value, dict):
        return value.get(language or "", value.get("default"))
    return value


@dataclass(frozen=True, slots=True)
class Length:
    """Drops documents with too few or too many units (characters for zh, words for en)."""

    name: ClassVar[str] = "length"
    min_units: PerLanguage = field(default_factory=lambda: {"zh": 100, "default": 50})
    max_units: PerLanguage = field(default_factory=lambda: {"zh": 200_000, "default": 100_000})

    def __call__(self, doc: Document) -> Document | Drop:
        n = len(units(doc.text))
        if n < for_language(self.min_units, doc.language):
            return Drop("too_short")
        if n > for_language(self.max_units, doc.language):
            return Drop("too_long")
        return doc


_STOP_WORDS = {
    "en": frozenset("the be to of and that have with".split()),
    "zh": frozenset("的 了 是 在 和 有 不 这 我 也 就 都 人 我们".split()),
}
_BULLETS = ("•", "●", "·", "-", "*", "▪", "◦", "‣", "–")


@dataclass(frozen=True, slots=True)
class GopherQuality:
    """Gopher's quality rules: word length (en), symbols per unit, bullet and ellipsis lines,
    units with a letter, and at least a few stop words."""

    name: ClassVar[str] = "gopher_quality"
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_unit_ratio: float = 0.1
    max_bullet_line_ratio: float = 0.9
    max_ellipsis_line_ratio: float = 0.3
    min_alpha_unit_ratio: float = 0.8
    min_stop_words: int = 2

    def __call__(self, doc: Document) -> Document | Drop:
        reason = self.reason(doc.text, doc.language)
        return Drop(reason) if reason else doc

    def reason(self, text: str, language: str | None) -> str | None:
        found = units(text)
        if not found:
            return "no_words"
        if not is_cjk_language(language):
            mean = sum(len(w) for w in found) / len(found)
            if not self.min_mean_word_length <= mean <= self.max_mean_word_length:
                return "mean_word_length"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / len(found) > self.max_symbol_unit_ratio:
            return "symbol_word_ratio"
        lines = [line for line in text.split("\n") if line.strip()]
        if sum(line.lstrip().startswith(_BULLETS) for line in lines) / len(lines) > self.max_bullet_line_ratio:
            return "bullet_lines"
        if sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > self.max_ellipsis_line_ratio:
            return "ellipsis_lines"
        if sum(any(c.isalpha() for c in w) for w in found) / len(found) < self.min_alpha_unit_ratio:
            return "few_alphabetic_words"
        stop_words = _STOP_WORDS.get(language or "", _STOP_WORDS["en"])
        if _count_stop_words(text, found, stop_words, language) < self.min_stop_words:
            return "few_stop_words"
        return None


def _count_stop_words(text: str, found: list[str], stop_words: frozenset[str], language: str | None) -> int:
    if is_cjk_language(language):  # multi-character stop words are found as substrings
        return sum(text.count(w) for w in stop_words)
    return sum(1 for w in found if w.lower() in stop_words)


@dataclass(frozen=True, slots=True)
class GopherRepetition:
    """Gopher's repetition rules: duplicate lines and paragraphs, the most frequent n-gram
    (n = 2..4) and the units covered by duplicated n-grams (n = 5..10), over units.

    Gopher's n counts words. Chinese is counted in characters, so there an n-gram is
    round(n x `cjk_chars_per_word`) characters long and spans as much text as Gopher's: shorter
    character n-grams repeat in any short page that names its subject twice.
    """

    name: ClassVar[str] = "gopher_repetition"
    max_duplicate_line_ratio: float = 0.3
    max_duplicate_line_char_ratio: float = 0.2
    max_duplicate_paragraph_ratio: float = 0.3
    max_top_ngram_ratio: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_duplicate_ngram_ratio: dict[int, float] = field(default_factory=lambda: {
        5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    cjk_chars_per_word: float = 1.6

    def __call__(self, doc: Document) -> Document | Drop:
        reason = self.reason(doc.text, doc.language)
        return Drop(reason) if reason else doc

    def reason(self, text: str, language: str | None = None) -> str | None:
        lines = [line for line in text.split("\n") if line.strip()]
        duplicates = _duplicates(lines)
        if lines and len(duplicates) / len(lines) > self.max_duplicate_line_ratio:
            return "duplicate_lines"
        if text and sum(len(line) for line in duplicates) / len(text) > self.max_duplicate_line_char_ratio:
            return "duplicate_line_chars"
        paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        if paragraphs and len(_duplicates(paragraphs)) / len(paragraphs) > self.max_duplicate_paragraph_ratio:
            return "duplicate_paragraphs"
        found = units(text)
        total = sum(len(u) for u in found)
        scale = self.cjk_chars_per_word if is_cjk_language(language) else 1.0
        for n, limit in sorted(self.max_top_ngram_ratio.items()):
            if total and _top_ngram_chars(found, round(int(n) * scale)) / total > limit:
                return f"top_{n}gram"
        for n, limit in sorted(self.max_duplicate_ngram_ratio.items()):
            if total and _duplicate_ngram_chars(found, round(int(n) * scale)) / total > limit:
                return f"duplicate_{n}gram"
        return None


def _duplicates(items: list[str]) -> list[str]:
    """Every occurrence of an item after its first."""
    seen: set[str] = set()
    repeated = []
    for item in items:
        if item in seen:
            repeated.append(item)
        seen.add(item)
    return repeated


def _ngrams(found: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(found[i:i + n]) for i in range(len(found) - n + 1)]


def _top_ngram_chars(found: list[str], n: int) -> int:
    """Characters in all occurrences of the most frequent n-gram (Gopher counts only repeated ones)."""
    counts = Counter(_ngrams(found, n))
    if not counts:
        return 0
    gram, count = counts.most_common(1)[0]
    return sum(len(u) for u in gram) * count if count > 1 else 0


def _duplicate_ngram_chars(found: list[str], n: int) -> int:
    """Characters of units covered by an n-gram that occurs more than once (each unit once)."""
    counts = Counter(_ngrams(found, n))
    covered = [False] * len(found)
    for i, gram in enumerate(_ngrams(found, n)):
        if counts[gram] > 1:
            covered[i:i + n] = [True] * n
    return sum(len(u) for u, c in zip(found, covered) if c)


@dataclass(frozen=True, slots=True)
class Ratios:
    """Drops documents whose non-space characters are too often symbols or digits."""

    name: ClassVar[str] = "ratios"
    max_symbol_ratio: float = 0.1
    max_digit_ratio: float = 0.25

    def __call__(self, doc: Document) -> Document | Drop:
        chars = [c for c in doc.text if not c.isspace()]
        if not chars:
            return Drop("empty")
        if sum(_is_symbol(c) for c in chars) / len(chars) > self.max_symbol_ratio:
            return Drop("symbol_ratio")
        if sum(c.isdigit() for c in chars) / len(chars) > self.max_digit_ratio:
            return Drop("digit_ratio")
        return doc


def _is_symbol(char: str) -> bool:
    """Unicode symbols (math, currency, emoji, box drawing…) and the ASCII marks of markup and tables."""
    return unicodedata.category(char).startswith("S") or char in "#*|_~\\"


_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>|&(?:[a-zA-Z]+|#\d+);")
_CODE_LINE = re.compile(
    r"(?:[;{}]\s*$|^\s*(?:import |from \S+ import |def |class |function\b|var |let |const |#include|"
    r"public |private |return\b)|=>|\(\);|\$\(|document\.|window\.)")


@dataclass(frozen=True, slots=True)
class Markup:
    """Drops HTML/XML leftovers, code-like pages (C4's curly-brace rule, softened to a line
    share), and boilerplate markers (lorem ipsum, "enable JavaScript")."""

    name: ClassVar[str] = "markup"
    max_markup_char_ratio: float = 0.05
    max_code_line_ratio: float = 0.3
    max_brace_ratio: float = 0.01
    boilerplate: tuple[str, ...] = ("lorem ipsum", "enable javascript", "javascript is disabled",
                                     "请启用javascript", "您的浏览器不支持")

    def __call__(self, doc: Document) -> Document | Drop:
        text = doc.text
        if not text:
            return Drop("empty")
        if sum(len(m) for m in _TAG.findall(text)) / len(text) > self.max_markup_char_ratio:
            return Drop("html_markup")
        lines = [line for line in text.split("\n") if line.strip()]
        if lines and sum(bool(_CODE_LINE.search(line)) for line in lines) / len(lines) > self.max_code_line_ratio:
            return Drop("code")
        if (text.count("{") + text.count("}")) / len(text) > self.max_brace_ratio:
            return Drop("code")
        lowered = text.lower()
        if any(marker in lowered for marker in self.boilerplate):
            return Drop("boilerplate")
        return doc
