"""Word files (.docx) → blocks: paragraphs and tables in body order, Heading styles as sections.

Owns walking the document body with python-docx and writing a table as text, one row a line
with cells joined by " | ". A .docx is a zip container: it is checked against the ingestion
limits (`limits.check_zip`) before python-docx, which reads whole members, opens it.
Knows nothing about chunking or storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from luodi.kb.document import Block
from luodi.kb.ingest.limits import IngestBudget, check_zip

CELL_SEPARATOR = " | "


def load_docx(path: Path, budget: IngestBudget) -> list[Block]:
    """Body paragraphs and tables in order; a "Heading n" or "Title" paragraph starts a section."""
    import docx
    from docx.table import Table

    check_zip(path, budget)
    blocks: list[Block] = []
    section: str | None = None
    for item in docx.Document(str(path)).iter_inner_content():
        if isinstance(item, Table):
            text, is_heading = table_text(item), False
        else:
            text, is_heading = item.text.strip(), _is_heading(item)
        if not text:
            continue
        if is_heading:
            section = text
        blocks.append(Block(text=text, section=section, heading=is_heading))
    return blocks


def table_text(table: Any) -> str:
    """A table as lines of "cell | cell"; a merged cell is written once, empty rows dropped."""
    rows = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is not previous:  # a horizontally merged cell repeats in row.cells
                cells.append(" ".join(cell.text.split()))
            previous = cell._tc
        if any(cells):
            rows.append(CELL_SEPARATOR.join(cells))
    return "\n".join(rows)


def _is_heading(paragraph: Any) -> bool:
    style = paragraph.style
    name = style.name if style is not None and style.name else ""
    return name.startswith("Heading") or name == "Title"
