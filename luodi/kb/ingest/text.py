"""Plain text and markdown → blocks; the text helpers the other loaders build on.

Owns: guessing the encoding of a text file (BOMs, UTF-8, then GB18030 — the superset of GBK and
GB2312 that Chinese Windows tools still write), splitting text into paragraphs, markdown
headings as sections, and joining the hard-wrapped lines that PDF and OCR text come in.
Knows nothing about files other than .txt/.md, and nothing about chunking or storage.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from luodi.errors import DocumentError
from luodi.kb.document import Block
from luodi.kb.ingest.limits import IngestBudget

# Tried in order after the BOM check; each decodes strictly, so the first that succeeds wins.
# UTF-8 first: valid UTF-8 that is really GBK is vanishingly rare for text longer than a few bytes.
FALLBACK_ENCODINGS = ("utf-8", "gb18030")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
# CJK ideographs, kana, hangul, and CJK / fullwidth punctuation: no space is written between these.
_CJK = re.compile(
    r"[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff"
    r"\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f]"
)
_CJK_GAP = re.compile(rf"(?<={_CJK.pattern})[ \t\u3000]+(?={_CJK.pattern})")


def load_text(path: Path, budget: IngestBudget | None = None) -> list[Block]:
    """A .txt file: paragraphs separated by blank lines, no sections. (Its size is the upload's:
    nothing inflates, so the budget has nothing to bound.)"""
    return [Block(text=p) for p in split_paragraphs(read_text(path))]


def load_markdown(path: Path, budget: IngestBudget | None = None) -> list[Block]:
    """A .md file: `#` headings become heading blocks and the section of what follows them."""
    return markdown_blocks(read_text(path))


def read_text(path: Path) -> str:
    """Decode a text file, guessing its encoding; newlines normalized to \\n."""
    return decode_text(path.read_bytes(), name=str(path))


def decode_text(data: bytes, name: str = "text") -> str:
    """Decode bytes as the first encoding that fits: a BOM's, else UTF-8, else GB18030."""
    text = _decode_by_bom(data)
    if text is None:
        text = _decode_first_fit(data, name)
    if "\x00" in text:
        raise DocumentError(f"{name}: looks like a binary file, not text; "
                            "convert it to a supported type (txt, md, html, pdf, docx, png, jpg)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_by_bom(data: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding).lstrip("\ufeff")
            except UnicodeDecodeError:
                return None
    return None


def _decode_first_fit(data: bytes, name: str) -> str:
    for encoding in FALLBACK_ENCODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DocumentError(f"{name}: text is in none of the encodings {', '.join(FALLBACK_ENCODINGS)} "
                        "(nor UTF-16/32 with a BOM); save it as UTF-8 and add it again")


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs are separated by blank lines; each is stripped, empty ones dropped."""
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]


def markdown_blocks(text: str) -> list[Block]:
    """Markdown → blocks: ATX headings (`# Title`) set the section; fenced code stays whole."""
    blocks: list[Block] = []
    section: str | None = None
    for is_heading, paragraph in _markdown_paragraphs(text):
        if is_heading:
            section = paragraph
        blocks.append(Block(text=paragraph, section=section, heading=is_heading))
    return blocks


def _markdown_paragraphs(text: str) -> Iterator[tuple[bool, str]]:
    """(is_heading, text) in document order. A heading line ends the paragraph above it."""
    lines: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        if heading or (not in_fence and not line.strip()):
            yield from _flush(lines)
            if heading:
                yield True, heading.group(2).strip()
            continue
        lines.append(line)
    yield from _flush(lines)


def _flush(lines: list[str]) -> Iterator[tuple[bool, str]]:
    paragraph = "\n".join(lines).strip()
    lines.clear()
    if paragraph:
        yield False, paragraph


def join_wrapped_lines(lines: Iterable[str]) -> str:
    """Join lines that were wrapped for layout (PDF, OCR) into one run of text.

    No space between two CJK characters — Chinese has no word spaces, and a stray one splits a
    word for search — a single space everywhere else.
    """
    joined = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        joined = join_pieces(joined, line)
    return joined


def join_pieces(left: str, right: str) -> str:
    """`left + right` with a space between them unless either side of the seam is CJK."""
    if not left or not right:
        return left + right
    if _CJK.match(left[-1]) or _CJK.match(right[0]):
        return left + right
    return f"{left} {right}"


def remove_cjk_spaces(text: str) -> str:
    """Drop whitespace between two CJK characters (OCR and some PDFs put spaces there)."""
    return _CJK_GAP.sub("", text)

