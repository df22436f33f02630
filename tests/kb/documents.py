"""Writers of test documents with known text: the oracles for the loaders, retrieval tests and the
knowledge-base benchmark.

Each `write_*` writes one file at `path` and returns `path`. Paragraph lists use one convention
throughout: a string starting with "# " / "## " … is a heading of that level, any other string
is a paragraph; in `write_docx` a list of rows (a list of lists of cell strings) is a table.
Chinese and English text is drawn with WenQuanYi Zen Hei (Debian's fonts-wqy-zenhei), which
covers both; `has_cjk_font()` says whether it is installed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from html import escape
from pathlib import Path
from typing import Any

WQY_ZENHEI = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
A4 = (595.28, 841.89)  # points
A5 = (419.53, 595.28)

Table = Sequence[Sequence[str]]
_HEADING = re.compile(r"^(#{1,6}) (.+)$")
# One token per CJK character (a line may break between any two), per word, per space run.
_WRAP_TOKENS = re.compile(r"[\u2e80-\u9fff\uf900-\uffef]|[^\s\u2e80-\u9fff\uf900-\uffef]+|\s+")


def has_cjk_font() -> bool:
    return WQY_ZENHEI.is_file()


def heading_level(paragraph: str) -> tuple[int, str]:
    """(level, text) for "## Text" → (2, "Text"); (0, paragraph) for a plain paragraph."""
    match = _HEADING.match(paragraph)
    return (len(match.group(1)), match.group(2)) if match else (0, paragraph)


# ---- plain text ------------------------------------------------------------------------------

def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """`text` in `encoding`: e.g. "gbk", "utf-8-sig" (UTF-8 with a BOM), "utf-16" (with a BOM)."""
    path.write_bytes(text.encode(encoding))
    return path


# ---- html ------------------------------------------------------------------------------------

def write_html(path: Path, title: str, paragraphs: Sequence[str], nav: Sequence[str] = (),
               footer: str | None = None, encoding: str = "utf-8") -> Path:
    """An article page: a `<nav>` menu of the `nav` labels, the title as <h1>, the paragraphs
    (headings by the "# " convention, "#" → <h2>), a sidebar of the nav labels again, and a
    `<footer>` — the boilerplate a loader must drop."""
    menu = "".join(f'<li><a href="/{i}">{escape(label)}</a></li>' for i, label in enumerate(nav))
    body = "\n".join(_html_paragraph(p) for p in paragraphs)
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="{encoding}"><title>{escape(title)}</title>'
            f"</head>\n<body>\n<header><nav><ul>{menu}</ul></nav></header>\n"
            f"<main><article>\n<h1>{escape(title)}</h1>\n{body}\n</article></main>\n"
            f'<aside><h3>Links</h3><ul>{menu}</ul></aside>\n'
            f"<footer><p>{escape(footer or '')}</p><ul>{menu}</ul></footer>\n</body></html>\n")
    path.write_bytes(page.encode(encoding))
    return path


def _html_paragraph(paragraph: str) -> str:
    level, text = heading_level(paragraph)
    if level:
        tag = f"h{min(level + 1, 6)}"
        return f"<{tag}>{escape(text)}</{tag}>"
    return f"<p>{escape(text)}</p>"


# ---- docx ------------------------------------------------------------------------------------

def write_docx(path: Path, blocks: Sequence[str | Table]) -> Path:
    """A Word file: strings are paragraphs ("# " headings use the Heading n styles), a list of
    rows is a table."""
    import docx

    document = docx.Document()
    for block in blocks:
        if isinstance(block, str):
            level, text = heading_level(block)
            if level:
                document.add_heading(text, level=level)
            else:
                document.add_paragraph(text)
        else:
            _add_docx_table(document, block)
    document.save(str(path))
    return path


def _add_docx_table(document: Any, rows: Table) -> None:
    table = document.add_table(rows=len(rows), cols=max(len(r) for r in rows))
    table.style = "Table Grid"
    for row, cells in zip(table.rows, rows, strict=True):
        for cell, text in zip(row.cells, cells, strict=False):  # short rows leave cells empty
            cell.text = text


# ---- pdf with a text layer -------------------------------------------------------------------

def write_pdf(path: Path, pages: Sequence[Sequence[str]], font: Path = WQY_ZENHEI,
              font_size: float = 12, page_size: tuple[float, float] = A4) -> Path:
    """A PDF with a real text layer: one page per entry, its paragraphs wrapped to the page width
    (headings by the "# " convention drawn larger). Raises ValueError if a page overflows."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfgen import canvas

    font_name = _register_pdf_font(font)
    pdf = canvas.Canvas(str(path), pagesize=page_size)
    margin = 72.0
    for paragraphs in pages:
        y = page_size[1] - margin
        for paragraph in paragraphs:
            level, text = heading_level(paragraph)
            size = font_size * (1.5 if level else 1.0)
            pdf.setFont(font_name, size)
            width = partial(pdfmetrics.stringWidth, fontName=font_name, fontSize=size)
            for line in wrap(text, width, page_size[0] - 2 * margin):
                y -= size * 1.5
                if y < margin:
                    raise ValueError(f"page overflows: {paragraph[:40]!r}; use fewer paragraphs")
                pdf.drawString(margin, y, line)
            y -= size  # paragraph gap
        pdf.showPage()
    pdf.save()
    return path


def _register_pdf_font(font: Path) -> str:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    name = font.stem
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(name, str(font), subfontIndex=0))
    return name


def wrap(text: str, width: Callable[[str], float], max_width: float) -> list[str]:
    """Greedy line wrap: Latin words stay whole, CJK text may break between any two characters."""
    lines: list[str] = []
    line = ""
    for token in _WRAP_TOKENS.findall(text):
        if line and width(line + token.rstrip()) > max_width:
            lines.append(line.rstrip())
            line = "" if token.isspace() else token
        else:
            line += token
    if line.strip():
        lines.append(line.rstrip())
    return lines


# ---- images and scans (no text layer) --------------------------------------------------------

def render_text_image(paragraphs: Sequence[str], font: Path = WQY_ZENHEI, font_size: int = 28,
                      size: tuple[int, int] | None = None, margin: int = 40) -> Any:
    """Black text on white as a PIL image. With `size`, paragraphs are wrapped to its width;
    without, the image is as large as the unwrapped text. Lines are 1.5 font sizes apart and
    paragraphs one more font size apart."""
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(str(font), font_size)
    max_width = (size[0] - 2 * margin) if size else float("inf")
    lines = [(wrap(p, face.getlength, max_width), p) for p in paragraphs]
    step, gap = int(font_size * 1.5), font_size
    if size is None:
        widest = max(face.getlength(line) for wrapped, _ in lines for line in wrapped)
        height = sum(len(wrapped) * step + gap for wrapped, _ in lines)
        size = (int(widest) + 2 * margin, height + 2 * margin - gap)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    y = margin
    for wrapped, paragraph in lines:
        for line in wrapped:
            if y + step > size[1] - margin:
                raise ValueError(f"image overflows: {paragraph[:40]!r}; use a larger size")
            draw.text((margin, y), line, font=face, fill="black")
            y += step
        y += gap
    return image


def write_png(path: Path, paragraphs: Sequence[str], font: Path = WQY_ZENHEI,
              font_size: int = 28, transparent: bool = False) -> Path:
    """The paragraphs rendered as an image, unwrapped; the format follows the suffix (.png, .jpg).

    `transparent`: black text on a fully transparent *black* background (RGBA 0,0,0,0), as many
    tools save it — dropping the alpha channel instead of compositing on white leaves all black.
    """
    from PIL import Image, ImageOps

    image = render_text_image(paragraphs, font=font, font_size=font_size)
    if transparent:
        black = Image.new("L", image.size, 0)
        image = Image.merge("RGBA", (black, black, black, ImageOps.invert(image.convert("L"))))
    image.save(path)
    return path


def write_scanned_pdf(path: Path, pages: Sequence[Sequence[str]], font: Path = WQY_ZENHEI,
                      font_size: float = 14, page_size: tuple[float, float] = A5,
                      dpi: int = 150) -> Path:
    """A PDF of page images only, like a scan: no text layer at all. Each page's paragraphs are
    rendered at `dpi` (font_size in points) and drawn over the whole page."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    pixels = (round(page_size[0] * dpi / 72), round(page_size[1] * dpi / 72))
    pdf = canvas.Canvas(str(path), pagesize=page_size)
    for paragraphs in pages:
        image = render_text_image(paragraphs, font=font, font_size=round(font_size * dpi / 72),
                                  size=pixels, margin=round(0.5 * dpi))
        pdf.drawImage(ImageReader(image), 0, 0, width=page_size[0], height=page_size[1])
        pdf.showPage()
    pdf.save()
    return path
