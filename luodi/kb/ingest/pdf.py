"""PDF files → blocks, one or more per page, with 1-based page numbers.

Owns reading the text layer (pypdf) and, for pages whose text layer is missing or negligible
(scans, photos of paper), rasterizing them (pypdfium2) and handing the picture to `ocr`. Within
the document's budget: the page count is checked before any page is read, the number of pages
to OCR before any is rasterized, each page's raster area before it is rendered, and the deadline
and cancellation between pages. Knows nothing about chunking or storage.
"""

from __future__ import annotations

import math
from pathlib import Path
import re
from typing import Any

from luodi.errors import DocumentError
from luodi.kb.document import Block
from luodi.kb.ingest.limits import IngestBudget, limit_error
from luodi.kb.ingest.ocr import read_paragraphs
from luodi.kb.ingest.text import join_wrapped_lines, remove_cjk_spaces, split_paragraphs

# A page whose text layer has fewer visible characters than this is OCRed too (a scan often
# carries a stray page number or a scanner's stamp as text).
MIN_TEXT_CHARS = 20
OCR_DPI = 200
MAX_OCR_SIDE = 2000  # pixels; RapidOCR shrinks anything larger anyway
SENTENCE_ENDS = ("。", "！", "？", "；", "：", ".", "!", "?", ";", ":", "”", "」")
# A numbered heading ("2.1 Results", "第二章 考勤", "一、背景", "（二）目标"): short, no closing
# punctuation. A body line wrapped at the page width is longer than MAX_HEADING_CHARS.
_NUMBERED_HEADING = re.compile(r"^\s*(\d+(\.\d+)*[.、)]?\s+\S|第[一二三四五六七八九十百\d]+[章篇部节条]|"
                               r"（[一二三四五六七八九十]+）|[一二三四五六七八九十]+、)")
MAX_HEADING_CHARS = 60


def load_pdf(path: Path, budget: IngestBudget) -> list[Block]:
    """Text of each page in order; a page without a usable text layer is OCRed."""
    reader = _open_reader(path)
    pages = _text_layers(reader, budget)
    _ocr_pages(path, pages, budget)
    return [Block(text=p, page=number) for number, paragraphs in enumerate(pages, start=1)
            for p in paragraphs]


def _text_layers(reader: Any, budget: IngestBudget) -> list[list[str]]:
    """Each page's text-layer paragraphs; the page count is checked first (pypdf reads it from the
    page tree without loading pages) and counted again while reading."""
    limits = budget.limits
    if len(reader.pages) > limits.max_pdf_pages:
        raise limit_error(budget.name, "the number of pages", len(reader.pages), limits, "max_pdf_pages")
    pages = []
    for page in reader.pages:
        if len(pages) == limits.max_pdf_pages:  # the page tree held more than its count said
            raise limit_error(budget.name, "the number of pages (at least)", len(pages) + 1, limits,
                              "max_pdf_pages")
        pages.append(page_paragraphs(page.extract_text() or ""))
        budget.page_read()
    return pages


def _ocr_pages(path: Path, pages: list[list[str]], budget: IngestBudget) -> None:
    """OCR, in place, each page whose text layer is missing or negligible, if that reads more."""
    numbers = [n for n, paragraphs in enumerate(pages, start=1) if _visible_chars(paragraphs) < MIN_TEXT_CHARS]
    if len(numbers) > budget.limits.max_ocr_pages:  # refused before the first page is rasterized
        raise limit_error(budget.name, "the number of pages without a text layer to OCR", len(numbers),
                          budget.limits, "max_ocr_pages")
    rasterizer = _Rasterizer(path, budget.limits.max_page_pixels)
    try:
        for number in numbers:
            budget.before_ocr()
            scanned = read_paragraphs(rasterizer.render(number))
            if _visible_chars(scanned) > _visible_chars(pages[number - 1]):
                pages[number - 1] = scanned
    finally:
        rasterizer.close()


def page_paragraphs(text: str) -> list[str]:
    """A page's extracted text as paragraphs, its layout line breaks joined.

    pypdf's plain mode (which keeps columns apart, unlike its layout mode) rarely marks
    paragraphs, so besides blank lines a line that ends a sentence ends a block too: a paragraph
    may come out as several blocks, but a sentence is never split between two. A numbered heading
    line that opens a block is a block of its own, so an outline can find it.
    """
    paragraphs = []
    for run in split_paragraphs(text):
        lines: list[str] = []
        for line in run.split("\n"):
            if not lines and _is_numbered_heading(line):  # a heading opening a block: a block alone
                paragraphs.append(line.strip())
                continue
            lines.append(line)
            if line.rstrip().endswith(SENTENCE_ENDS):
                paragraphs.append(join_wrapped_lines(lines))
                lines = []
        paragraphs.append(join_wrapped_lines(lines))
    return [remove_cjk_spaces(p) for p in paragraphs if p]


def _is_numbered_heading(line: str) -> bool:
    line = line.strip()
    return (len(line) <= MAX_HEADING_CHARS and bool(_NUMBERED_HEADING.match(line))
            and not line.endswith((*SENTENCE_ENDS, ",", "，")))


def _open_reader(path: Path) -> Any:
    import pypdf

    reader = pypdf.PdfReader(path)
    # Many "protected" PDFs only restrict printing/copying and open with the empty password.
    if reader.is_encrypted and not reader.decrypt(""):
        raise DocumentError(f"{path.name}: the PDF is password-protected; "
                            "save an unprotected copy and add that instead")
    return reader


def _visible_chars(paragraphs: list[str]) -> int:
    return sum(len("".join(p.split())) for p in paragraphs)


def raster_scale(width: float, height: float, max_pixels: int) -> float:
    """Pixels per point for a `width` × `height` page: OCR_DPI, less if the longest side would
    pass MAX_OCR_SIDE or the area `max_pixels`."""
    width, height = max(width, 1.0), max(height, 1.0)  # a degenerate page renders as a dot
    return min(OCR_DPI / 72, MAX_OCR_SIDE / max(width, height), math.sqrt(max_pixels / (width * height)))


class _Rasterizer:
    """Renders pages to images for OCR; the pdfium document is opened only if a page needs it."""

    def __init__(self, path: Path, max_pixels: int) -> None:
        self._path = path
        self._max_pixels = max_pixels
        self._document: Any = None

    def render(self, number: int) -> Any:
        """Page `number` (1-based) as a PIL image at OCR_DPI, longest side at most MAX_OCR_SIDE and
        at most `max_pixels` in all (scaled down to fit, whatever size the page declares)."""
        import pypdfium2

        if self._document is None:
            self._document = pypdfium2.PdfDocument(self._path)
        page = self._document[number - 1]
        width, height = page.get_size()  # points, 1/72 inch
        return page.render(scale=raster_scale(width, height, self._max_pixels)).to_pil()

    def close(self) -> None:
        if self._document is not None:
            self._document.close()
