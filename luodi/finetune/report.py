"""The loss record of a training run: `loss.json` and a `loss.png` curve drawn with Pillow.

Knows the training log's numbers and files; nothing of models. Pillow draws the picture (a few
lines and labels need no plotting library); without Pillow only loss.json is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

WIDTH, HEIGHT, MARGIN = 800, 480, 60


class LossLog(Protocol):
    steps: list[dict[str, float]]
    evals: list[dict[str, float]]
    num_tokens: int
    train_seconds: float

    @property
    def tokens_per_s(self) -> float: ...


def write_loss_report(log: LossLog, out: Path, meta: dict[str, Any] | None = None) -> None:
    record = {
        **(meta or {}),
        "train": log.steps,
        "eval": log.evals,
        "num_tokens": log.num_tokens,
        "train_seconds": round(log.train_seconds, 3),
        "tokens_per_s": round(log.tokens_per_s, 2),
    }
    (out / "loss.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    try:
        draw_loss_curve(log, out / "loss.png")
    except ImportError:
        pass  # loss.json holds the same numbers; the picture is a convenience


def draw_loss_curve(log: LossLog, path: Path) -> None:
    """Train loss per step (blue) and eval loss at each epoch's end (orange dots) against steps."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    steps = [(s["step"], s["loss"]) for s in log.steps]
    per_epoch = _last_step_of_epoch(log.steps)
    evals = [(per_epoch.get(int(e["epoch"]), 0), e["loss"]) for e in log.evals]
    points = steps + evals
    if not points:
        image.save(path)
        return
    x_max = max(1, max(x for x, _ in points))
    y_lo, y_hi = min(y for _, y in points), max(y for _, y in points)
    y_hi = y_hi if y_hi > y_lo else y_lo + 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        px = MARGIN + (WIDTH - 2 * MARGIN) * x / x_max
        py = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (y - y_lo) / (y_hi - y_lo)
        return px, py

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    for frac in (0.0, 0.5, 1.0):
        y = y_lo + frac * (y_hi - y_lo)
        draw.text((4, at(0, y)[1] - 6), f"{y:.2f}", fill="black")
    draw.text((WIDTH // 2 - 20, HEIGHT - MARGIN + 20), f"step (0-{x_max})", fill="black")
    draw.text((MARGIN, 20), "loss: train (blue), eval (orange)", fill="black")
    if len(steps) > 1:
        draw.line([at(x, y) for x, y in steps], fill=(31, 119, 180), width=2)
    for x, y in evals:
        px, py = at(x, y)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(255, 127, 14))
    image.save(path)


def _last_step_of_epoch(steps: list[dict[str, float]]) -> dict[int, int]:
    last: dict[int, int] = {}
    for s in steps:
        last[int(s["epoch"])] = int(s["step"])
    return last
