"""Text normalizers: Unicode NFKC, whitespace, traditional → simplified Chinese, mojibake.

Owns making equal text look equal before anything counts it. Mojibake is repaired only where
the repair is certain — UTF-8 read as GBK (a round trip through GB18030 gives valid UTF-8 with
Chinese in it), or what ftfy's encoding fixer undoes — and detected, not guessed at, where it
is not (replacement characters, ftfy's badness heuristic): such a document is dropped.
Knows nothing about files, languages or other steps.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from luodi.corpus.document import Document, Drop, cjk_fraction

if TYPE_CHECKING:
    import opencc

_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True, slots=True)
class Normalize:
    """NFKC, whitespace, optional traditional → simplified, mojibake repair and detection."""

    name: ClassVar[str] = "normalize"
    nfkc: bool = True
    whitespace: bool = True
    traditional_to_simplified: bool = False
    fix_mojibake: bool = True
    max_replacement_char_ratio: float = 0.001

    def __call__(self, doc: Document) -> Document | Drop:
        text, repaired = doc.text, False
        if self.fix_mojibake:
            text, repaired = repair_mojibake(text)
            if looks_like_mojibake(text, self.max_replacement_char_ratio):
                return Drop("mojibake")
        if self.nfkc:
            text = unicodedata.normalize("NFKC", text)
        if self.whitespace:
            text = normalize_whitespace(text)
        if self.traditional_to_simplified:
            text = to_simplified(text)
        if not text:
            return Drop("empty")
        return doc.with_text(text).with_stats(self.name, {"mojibake_repaired": repaired})


def normalize_whitespace(text: str) -> str:
    """Invisible and control characters removed, runs of spaces one space, lines stripped,
    at most one blank line in a row, CRLF as LF."""
    text = _CONTROL.sub("", _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n")))
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def repair_mojibake(text: str) -> tuple[str, bool]:
    """The text with certain mojibake undone, and whether anything was."""
    gbk = _undo_gbk_misreading(text)
    if gbk is not None:
        return gbk, True
    import ftfy

    fixed = ftfy.fix_encoding(text)
    return fixed, fixed != text


def looks_like_mojibake(text: str, max_replacement_char_ratio: float) -> bool:
    """Replacement characters (U+FFFD) above the ratio, or text ftfy's heuristic calls garbled."""
    from ftfy.badness import is_bad

    if text and text.count("\ufffd") / len(text) > max_replacement_char_ratio:
        return True
    return is_bad(text)


def _undo_gbk_misreading(text: str) -> str | None:
    """UTF-8 bytes that were decoded as GBK, decoded again as UTF-8 — when that works exactly.

    Genuine Chinese text almost never re-encodes to valid UTF-8, so a strict round trip whose
    result is mostly Chinese is taken as proof.
    """
    if cjk_fraction(text) < 0.5:
        return None
    try:
        candidate = text.encode("gb18030").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return None
    return candidate if candidate != text and cjk_fraction(candidate) >= 0.5 else None


@functools.cache
def _t2s() -> opencc.OpenCC:
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional Chinese characters as simplified ones (opencc `t2s`); other text unchanged."""
    return _t2s().convert(text)
