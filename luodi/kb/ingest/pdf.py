"""PDF files → blocks, one or more per page, with 1-based page numbers.

Owns reading the text layer (pypdf) and, for pages whose text layer is missing or negligible
(scans, photos of paper), rasterizing them (pypdfium2) and handing the picture to `ocr`.
Knows nothing about chunking or storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from luodi.errors import DocumentError
from luodi.kb.document import Block
from luodi.kb.ingest.ocr import read_paragraphs
from luodi.kb.ingest.text import join_wrapped_lines, remove_cjk_spaces, split_paragraphs

# A page whose text layer has fewer visible characters than this is OCRed too (a scan often
# carries a stray page number or a scanner's stamp as text).
MIN_TEXT_CHARS = 20
OCR_DPI = 200
MAX_OCR_SIDE = 2000  # pixels; RapidOCR shrinks anything larger anyway
SENTENCE_ENDS = ("。", "！", "？", "；", "：", ".", "!", "?", ";", ":", "”", "」")


def load_pdf(path: Path) -> list[Block]:
    """Text of each page in order; a page without a usable text layer is OCRed."""
    reader = _open_reader(path)
    rasterizer = _Rasterizer(path)
    try:
        blocks: list[Block] = []
        for number, page in enumerate(reader.pages, start=1):
            paragraphs = page_paragraphs(page.extract_text() or "")
            if _visible_chars(paragraphs) < MIN_TEXT_CHARS:
                scanned = read_paragraphs(rasterizer.render(number))
                if _visible_chars(scanned) > _visible_chars(paragraphs):
                    paragraphs = scanned
            blocks.extend(Block(text=p, page=number) for p in paragraphs)
        return blocks
    finally:
        rasterizer.close()


def page_paragraphs(text: str) -> list[str]:
    """A page's extracted text as paragraphs, its layout line breaks joined.

    pypdf's plain mode (which keeps columns apart, unlike its layout mode) rarely marks
    paragraphs, so besides blank lines a line that ends a sentence ends a block too: a paragraph
    may come out as several blocks, but a sentence is never split between two.
    """
    paragraphs = []
    for run in split_paragraphs(text):
        lines: list[str] = []
        for line in run.split("\n"):
            lines.append(line)
            if line.rstrip().endswith(SENTENCE_ENDS):
                paragraphs.append(join_wrapped_lines(lines))
                lines = []
        paragraphs.append(join_wrapped_lines(lines))
    return [remove_cjk_spaces(p) for p in paragraphs if p]


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


class _Rasterizer:
    """Renders pages to images for OCR; the pdfium document is opened only if a page needs it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._document: Any = None

    def render(self, number: int) -> Any:
        """Page `number` (1-based) as a PIL image at OCR_DPI, longest side at most MAX_OCR_SIDE."""
        import pypdfium2

        if self._document is None:
            self._document = pypdfium2.PdfDocument(self._path)
        page = self._document[number - 1]
        width, height = page.get_size()  # points, 1/72 inch
        scale = min(OCR_DPI / 72, MAX_OCR_SIDE / max(width, height))
        return page.render(scale=scale).to_pil()

    def close(self) -> None:
        if self._document is not None:
            self._document.close()
