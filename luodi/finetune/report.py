"""The record of a training run: `loss.json`, the learning report `report.json`, and `loss.png`.

`loss.json` holds the curve (train loss and lr per step, eval loss per epoch); `report.json` holds
what the run chose and what it taught: every setting with the reason for it, where the held-out
examples came from, held-out loss before / after, the probe (each held-out prompt's greedy answer
before and after training, and whether it holds the expected answer) and the general-text
perplexity before / after. `loss.png` draws the curve with the best epoch marked and the same
summary written under it; `summary_lines` is also what the terminal prints.

Knows the training log's and result's numbers and files; nothing of models. Pillow draws the
picture (a few lines and labels need no plotting library); without Pillow only the JSON is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

WIDTH, HEIGHT, MARGIN = 800, 480, 60
LINE_HEIGHT = 16


class LossLog(Protocol):
    steps: list[dict[str, float]]
    evals: list[dict[str, float]]
    num_tokens: int
    train_seconds: float
    best_epoch: int | None

    @property
    def tokens_per_s(self) -> float: ...


def write_loss_report(
    log: LossLog, out: Path, meta: dict[str, Any] | None = None, summary: list[str] | None = None,
) -> None:
    record = {
        **(meta or {}),
        "train": log.steps,
        "eval": log.evals,
        "best_epoch": log.best_epoch,
        "num_tokens": log.num_tokens,
        "train_seconds": round(log.train_seconds, 3),
        "tokens_per_s": round(log.tokens_per_s, 2),
    }
    (out / "loss.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    try:
        draw_loss_curve(log, out / "loss.png", summary or [])
    except ImportError:
        pass  # loss.json holds the same numbers; the picture is a convenience


def learning_record(result: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """report.json's content from a `train.FinetuneResult`."""
    probe = result.probe
    return {
        **meta,
        "heldout": result.heldout,
        "plan": result.plan.to_dict(),
        "num_steps": result.num_steps,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "eval_loss": {"before": result.eval_loss_before, "after": result.eval_loss_after},
        "probe": {
            "num_probed": len(probe),
            "answered_before": sum(p.found_before for p in probe),
            "answered_after": sum(p.found_after for p in probe),
            "items": [p.to_dict() for p in probe],
        },
        "general_text": {
            "perplexity_per_byte_before": result.general_ppl_before,
            "perplexity_per_byte_after": result.general_ppl_after,
            "rise": result.general_ppl_rise,
            "is_forgetting": result.is_forgetting,
        },
        "tokens_per_s": round(result.tokens_per_s, 2),
        "wall_seconds": round(result.wall_seconds, 2),
    }


def write_learning_report(record: dict[str, Any], out: Path) -> None:
    (out / "report.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The learning report in a few lines (the terminal and loss.png)."""
    lines = [f"held-out: {record['heldout']}"]
    loss = record["eval_loss"]
    if loss["before"] is not None and loss["after"] is not None:
        best = f" (epoch {record['best_epoch']} kept)" if record["best_epoch"] is not None else ""
        lines.append(f"held-out loss {loss['before']:.4f} -> {loss['after']:.4f}{best}")
    probe = record["probe"]
    if probe["num_probed"]:
        n = probe["num_probed"]
        lines.append(f"probe: {probe['answered_before']}/{n} held-out answers hold the expected answer before, "
                     f"{probe['answered_after']}/{n} after")
    text = record["general_text"]
    if text["rise"] is not None:
        flag = "  WARNING: forgetting" if text["is_forgetting"] else ""
        lines.append(f"general text perplexity per byte {text['perplexity_per_byte_before']:.4f} -> "
                     f"{text['perplexity_per_byte_after']:.4f} ({text['rise']:+.1%}){flag}")
    return lines


def draw_loss_curve(log: LossLog, path: Path, summary: list[str] | None = None) -> None:
    """Train loss per step (blue), eval loss at each epoch's end (orange dots; the kept epoch
    ringed) against steps, and the summary lines under the plot."""
    from PIL import Image, ImageDraw

    summary = summary or []
    image = Image.new("RGB", (WIDTH, HEIGHT + LINE_HEIGHT * len(summary)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(summary):
        draw.text((MARGIN, HEIGHT - 10 + LINE_HEIGHT * i), line, fill="black")
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
    draw.text((MARGIN, 20), "loss: train (blue), eval (orange), kept epoch (red ring)", fill="black")
    if len(steps) > 1:
        draw.line([at(x, y) for x, y in steps], fill=(31, 119, 180), width=2)
    for (x, y), e in zip(evals, log.evals, strict=True):
        px, py = at(x, y)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(255, 127, 14))
        if log.best_epoch is not None and int(e["epoch"]) == log.best_epoch:
            draw.ellipse([px - 8, py - 8, px + 8, py + 8], outline=(214, 39, 40), width=2)
    image.save(path)


def _last_step_of_epoch(steps: list[dict[str, float]]) -> dict[int, int]:
    last: dict[int, int] = {}
    for s in steps:
        last[int(s["epoch"])] = int(s["step"])
    return last
