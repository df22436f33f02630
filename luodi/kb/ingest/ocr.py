"""Optical character recognition: an image → its text lines, and paragraphs, in reading order.

Owns the one shared RapidOCR engine, created on first use. Its PP-OCR detection, orientation
and recognition models are the onnx files that ship inside the `rapidocr` wheel; they are
passed by explicit path, so RapidOCR never takes its download path and nothing touches the
network (the recognizer's character list is embedded in its onnx file). Also owns ordering the
engine's boxes into lines and lines into paragraphs. Knows nothing about files or documents.
"""

from __future__ import annotations

import itertools
import re
import statistics
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from luodi.errors import LuodiError
from luodi.kb.ingest.text import join_pieces, join_wrapped_lines, remove_cjk_spaces

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# A gap between two lines taller than this fraction of the median line height starts a paragraph.
PARAGRAPH_GAP = 0.8

_engine: Any = None
_engine_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class _Box:
    text: str
    left: float
    top: float
    bottom: float


def read_lines(image: Image.Image | np.ndarray) -> list[str]:
    """The text lines of an image, top to bottom; boxes on one line are joined left to right.

    A numpy array is taken in PIL's channel order (RGB, or grayscale).
    """
    return [_line_text(line) for line in _lines(_recognize(image))]


def read_paragraphs(image: Image.Image | np.ndarray) -> list[str]:
    """The text of an image as paragraphs: lines split where the vertical gap is large, the
    wrapped lines of a paragraph joined (no space between CJK characters)."""
    lines = _lines(_recognize(image))
    if not lines:
        return []
    height = statistics.median(box.bottom - box.top for line in lines for box in line)
    paragraphs = [[_line_text(lines[0])]]
    for previous, line in itertools.pairwise(lines):
        if _top(line) - _bottom(previous) > PARAGRAPH_GAP * height:
            paragraphs.append([])
        paragraphs[-1].append(_line_text(line))
    return [join_wrapped_lines(p) for p in paragraphs]


def ocr_engine() -> Any:
    """The shared RapidOCR engine, created on first call from the models bundled in `rapidocr`."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _create_engine()
    return _engine


def _create_engine() -> Any:
    import rapidocr

    models = Path(rapidocr.__file__).parent / "models"
    return rapidocr.RapidOCR(params={
        "Global.log_level": "error",
        "Det.model_path": str(_bundled_model(models, "det")),
        "Cls.model_path": str(_bundled_model(models, "cls")),
        "Rec.model_path": str(_bundled_model(models, "rec")),
    })


def _bundled_model(models: Path, task: str) -> Path:
    """The bundled onnx model for `task` (det, cls, rec); the newest PP-OCR version if several."""
    found = sorted(models.glob(f"*{task}*.onnx"), key=_model_version)
    if not found:
        raise LuodiError(f"the installed rapidocr has no bundled {task} model in {models}; "
                         "reinstall it with pip install --force-reinstall 'rapidocr>=3.0'")
    return found[-1]


def _model_version(path: Path) -> tuple[int, str]:
    match = re.search(r"OCRv(\d+)", path.name)
    return (int(match.group(1)) if match else 0, path.name)


def _recognize(image: Image.Image | np.ndarray) -> list[_Box]:
    result = ocr_engine()(_to_rgb(image))
    if result.boxes is None or not result.txts:
        return []
    boxes = []
    for points, text in zip(result.boxes, result.txts, strict=True):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        text = remove_cjk_spaces(text.strip())
        if text:
            boxes.append(_Box(text, float(min(xs)), float(min(ys)), float(max(ys))))
    return boxes


def _to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """RGB on white: a transparent background would otherwise turn black, like most text."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, "white")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _lines(boxes: list[_Box]) -> list[list[_Box]]:
    """Group boxes into lines: a box whose vertical centre lies within the current line's extent
    joins it. Lines come top to bottom, boxes in a line left to right."""
    lines: list[list[_Box]] = []
    for box in sorted(boxes, key=lambda b: (b.top + b.bottom) / 2):
        centre = (box.top + box.bottom) / 2
        if lines and _top(lines[-1]) <= centre <= _bottom(lines[-1]):
            lines[-1].append(box)
        else:
            lines.append([box])
    return [sorted(line, key=lambda b: b.left) for line in lines]


def _line_text(line: list[_Box]) -> str:
    text = ""
    for box in line:
        text = join_pieces(text, box.text)
    return text


def _top(line: list[_Box]) -> float:
    return min(box.top for box in line)


def _bottom(line: list[_Box]) -> float:
    return max(box.bottom for box in line)
