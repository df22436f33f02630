"""`luodi outline FILE`: a document's hierarchical outline, Markdown (or `--json`) on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def outline(
    file: Annotated[Path, typer.Argument(help="A document: .pdf, .docx, .html, .md, .txt (scans are OCRed).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the outline as JSON instead of Markdown.")] = False,
) -> None:
    """Outline a document: headings nested by level, with page numbers and key points."""
    from luodi.apps.outline import outline_document, to_markdown

    result = outline_document(file)
    text = json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n" if as_json else to_markdown(result)
    sys.stdout.write(text)
