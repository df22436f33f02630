"""The funnel report: per stage documents, bytes and characters in and out, each drop reason's
count with sampled rejects, edit counts, and the language mix before and after.

Owns `FunnelReport` and writing it as report.json, report.md and (when Pillow is installed)
report.png, a bar per stage. Knows nothing about steps or executors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from luodi.paths import write_text_atomic


@dataclass(frozen=True, slots=True)
class StageReport:
    name: str
    docs_in: int
    docs_out: int
    bytes_in: int
    bytes_out: int
    chars_in: int
    chars_out: int
    drops: dict[str, int]
    samples: dict[str, list[dict[str, str]]]
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class FunnelReport:
    """What a cleaning run read, dropped per stage, and kept."""

    num_read: int
    num_kept: int
    num_removed: int
    stages: tuple[StageReport, ...]
    languages_before: dict[str, int]
    languages_after: dict[str, int]
    input_errors: tuple[str, ...]
    num_shards: int
    num_resumed_shards: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(tallies: dict[str, dict[str, Any]], **fields: Any) -> FunnelReport:
    stages = tuple(StageReport(name=name, **tally) for name, tally in tallies.items())
    return FunnelReport(stages=stages, **fields)


def write_report(report: FunnelReport, out: Path) -> None:
    write_text_atomic(out / "report.json", json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(out / "report.md", render_markdown(report))
    write_chart(report, out / "report.png")


def render_markdown(report: FunnelReport) -> str:
    lines = [
        "# Corpus cleaning report", "",
        f"{report.num_read} documents read, {report.num_kept} kept, {report.num_removed} removed "
        f"({report.num_shards} shards, {report.num_resumed_shards} resumed).", "",
        "| stage | docs in | docs out | dropped | chars in | chars out | bytes in | bytes out |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.stages:
        lines.append(f"| {s.name} | {s.docs_in} | {s.docs_out} | {s.docs_in - s.docs_out} | {s.chars_in} | "
                     f"{s.chars_out} | {s.bytes_in} | {s.bytes_out} |")
    lines += ["", "## Drop reasons", ""]
    for s in report.stages:
        for reason, count in sorted(s.drops.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"### {s.name}: {reason} ({count})")
            lines += [f"- `{x['id']}`: {_one_line(x['text'])}" for x in s.samples.get(reason, [])]
            lines.append("")
    edits = [(s.name, k, v) for s in report.stages for k, v in sorted(s.counts.items())]
    if edits:
        lines += ["## Edits", ""] + [f"- {stage}: {key} {value}" for stage, key, value in edits] + [""]
    lines += ["## Languages", "", "| language | before | after |", "|---|---:|---:|"]
    for lang in sorted(set(report.languages_before) | set(report.languages_after)):
        lines.append(f"| {lang} | {report.languages_before.get(lang, 0)} | {report.languages_after.get(lang, 0)} |")
    if report.input_errors:
        lines += ["", "## Input errors", ""] + [f"- {e}" for e in report.input_errors]
    return "\n".join(lines) + "\n"


def write_chart(report: FunnelReport, path: Path) -> None:
    """A horizontal bar per stage (documents out), when Pillow is installed."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return
    width, row = 640, 28
    image = Image.new("RGB", (width, row * (len(report.stages) + 1) + 10), "white")
    draw = ImageDraw.Draw(image)
    top = max(report.num_read, 1)
    draw.text((10, 6), f"read {report.num_read}", fill="black")
    for i, s in enumerate(report.stages, start=1):
        y = i * row + 5
        draw.rectangle((170, y, 170 + int((width - 240) * s.docs_out / top), y + row - 8), fill=(70, 130, 180))
        draw.text((10, y + 4), s.name, fill="black")
        draw.text((width - 60, y + 4), str(s.docs_out), fill="black")
    tmp = path.with_suffix(".png.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:160].replace("|", "\\|")
