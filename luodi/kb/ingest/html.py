"""Web pages (.html, .htm) → blocks: the main text only, headings as sections.

Owns asking trafilatura for the page's main content — navigation, menus, footers, ads and
comment threads dropped — and turning its XML (head, p, list, table, quote, code) into blocks.
XML rather than markdown output, because markdown escapes the text (`snake\\_case`).
Knows nothing about chunking or storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from luodi.kb.document import Block
from luodi.kb.ingest.limits import IngestBudget

CELL_SEPARATOR = " | "


def load_html(path: Path, budget: IngestBudget | None = None) -> list[Block]:
    """The main content of an HTML file; the encoding is taken from the page (or guessed).
    Nothing inflates (the page's size is the file's), so the budget has nothing to bound."""
    return main_blocks(path.read_bytes())


def main_blocks(html: bytes | str) -> list[Block]:
    """The page's main content in order; a heading sets the section of the blocks after it."""
    import trafilatura
    from lxml import etree

    xml = trafilatura.extract(html, output_format="xml", include_comments=False,
                              include_tables=True, include_images=False, include_links=False)
    if not xml:
        return []
    main = etree.fromstring(xml).find("main")
    blocks: list[Block] = []
    section: str | None = None
    for element in main if main is not None else []:
        text = element_text(element)
        is_heading = element.tag == "head"
        if is_heading and text:
            section = text
        if text:
            blocks.append(Block(text=text, section=section, heading=is_heading))
    return blocks


def element_text(element: Any) -> str:
    """One of trafilatura's block elements as text: a list item or table row a line."""
    if element.tag == "table":
        rows = (CELL_SEPARATOR.join(_inline_text(c).strip() for c in row.iterchildren("cell"))
                for row in element.iterchildren("row"))
        return "\n".join(r for r in rows if r.strip(" |"))
    if element.tag == "list":
        return "\n".join(_inline_text(item).strip() for item in element.iterchildren("item"))
    return _inline_text(element).strip()


def _inline_text(element: Any) -> str:
    """All text under `element`, a line break for each <lb/>."""
    parts = [element.text or ""]
    for child in element:
        parts.append("\n" if child.tag == "lb" else _inline_text(child))
        parts.append(child.tail or "")
    return "".join(parts)
