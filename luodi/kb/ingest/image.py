"""Image files (.png, .jpg, .jpeg) → blocks, by OCR: one block per paragraph of recognized text.

Owns opening the image (EXIF rotation applied, so phone photos read upright), after its header's
pixel count has passed the ingestion limit. The recognition itself is `ocr`'s. Knows nothing about chunking or storage.
"""

from __future__ import annotations

from pathlib import Path

from luodi.kb.document import Block
from luodi.kb.ingest.limits import IngestBudget, open_image
from luodi.kb.ingest.ocr import read_paragraphs


def load_image(path: Path, budget: IngestBudget) -> list[Block]:
    """The OCRed text of an image file as paragraph blocks (no page, no section)."""
    from PIL import ImageOps

    with open_image(path, budget) as image:
        budget.before_ocr()
        upright = ImageOps.exif_transpose(image)
        return [Block(text=p) for p in read_paragraphs(upright)]
