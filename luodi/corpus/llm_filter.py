"""The LLM fine filter: the survivors of every other step, scored by bits per character under
Luodi's own LLM, bucketed and cut by per-language percentiles (CCNet's head / middle / tail)
rather than absolute values, which differ by language and by model.

Owns the `llm_filter` step. Its thresholds are percentiles over the whole kept corpus, so it runs
once after the corpus-wide steps, on the finished output of any executor: it reads kept.jsonl,
scores every document (`luodi.corpus.llm_score`), rewrites kept.jsonl without the documents above
the `drop_percentile` of their language, appends those to removed.jsonl, and adds its stage to the
funnel report; the thresholds go to llm_filter.json. Deterministic: documents are read and written
in input order. A document too short to score (under 2 tokens) is kept, in bucket "unscored".
Must not know: the other steps, executors, the CLI.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from luodi.corpus.document import Document
from luodi.corpus.pipeline import Removed, Tallies
from luodi.corpus.report import FunnelReport, StageReport, write_report

DROP_REASON = "high_bits_per_char"
THRESHOLDS_FILE = "llm_filter.json"


@dataclass(frozen=True, slots=True)
class LLMFilter:
    """Drops the survivors whose LLM bits per character is above their language's drop percentile."""

    name: ClassVar[str] = "llm_filter"
    model: str | None = None  # the LLM; None: the step is off
    max_tokens: int = 512  # a document is scored on its first max_tokens tokens
    batch_tokens: int = 2048  # tokens per forward pass, padding included
    head_percentile: float = 33.3  # at or below: head
    tail_percentile: float = 66.7  # above: tail; between: middle
    drop_percentile: float = 90.0  # above: dropped

    def __post_init__(self) -> None:
        if not 0 <= self.head_percentile <= self.tail_percentile <= 100 or not 0 < self.drop_percentile <= 100:
            raise ValueError(f"llm_filter: need 0 <= head_percentile ({self.head_percentile}) <= tail_percentile "
                             f"({self.tail_percentile}) <= 100 and 0 < drop_percentile ({self.drop_percentile}) <= 100")


@dataclass(frozen=True, slots=True)
class Thresholds:
    head: float
    tail: float
    drop: float


def language_thresholds(bpcs: Sequence[float | None], languages: Sequence[str], step: LLMFilter,
                        ) -> dict[str, Thresholds]:
    """Per language, the bits per character at each percentile of that language's scored documents
    (numpy's linear interpolation)."""
    found: dict[str, list[float]] = {}
    for bpc, language in zip(bpcs, languages):
        if bpc is not None:
            found.setdefault(language, []).append(bpc)
    return {lang: Thresholds(*(float(np.percentile(values, p)) for p in
                               (step.head_percentile, step.tail_percentile, step.drop_percentile)))
            for lang, values in sorted(found.items())}


def bucket(bpc: float | None, thresholds: Thresholds | None) -> str:
    if bpc is None or thresholds is None:
        return "unscored"
    return "head" if bpc <= thresholds.head else "middle" if bpc <= thresholds.tail else "tail"


def is_dropped(bpc: float | None, thresholds: Thresholds | None) -> bool:
    return bpc is not None and thresholds is not None and bpc > thresholds.drop


def apply_llm_filter(out: Path, step: LLMFilter, report: FunnelReport, *, sample_rejects: int = 5,
                     progress: bool = False) -> FunnelReport:
    """Filters out/kept.jsonl in place (see the module docstring); the report with this stage added."""
    from luodi.corpus.llm_score import BpcScorer

    records = [json.loads(line) for line in (out / "kept.jsonl").read_text(encoding="utf-8").splitlines()]
    languages = [_language(r) for r in records]
    scorer = BpcScorer.load(str(step.model), max_tokens=step.max_tokens, batch_tokens=step.batch_tokens,
                            progress=progress)
    scores = scorer.score([r["text"] for r in records], progress=progress)
    bpcs = [s.bits_per_char for s in scores]
    thresholds = language_thresholds(bpcs, languages, step)
    tallies = Tallies([step.name], sample_rejects)
    counts = tallies.stages[step.name]["counts"]
    kept_tmp = out / "kept.jsonl.tmp"
    languages_after: dict[str, int] = {}
    with kept_tmp.open("w", encoding="utf-8") as kept, (out / "removed.jsonl").open("a", encoding="utf-8") as removed:
        for record, language, score in zip(records, languages, scores):
            tallies.enter(step.name, record["text"])
            limits = thresholds.get(language)
            if is_dropped(score.bits_per_char, limits):
                tallies.drop(Removed(record["id"], step.name, DROP_REASON, record["text"]))
                removed.write(_line({"id": record["id"], "stage": step.name, "reason": DROP_REASON}))
                continue
            name = bucket(score.bits_per_char, limits)
            counts[name] = counts.get(name, 0) + 1
            record["stats"][step.name] = {"bits_per_char": _round(score.bits_per_char), "bucket": name,
                                          "is_truncated": score.is_truncated}
            tallies.forward(step.name, Document(record["id"], record["text"]))
            languages_after[language] = languages_after.get(language, 0) + 1
            kept.write(_line(record))
    kept_tmp.replace(out / "kept.jsonl")
    _write_thresholds(out / THRESHOLDS_FILE, step, thresholds)
    stage = StageReport(name=step.name, **tallies.stages[step.name])
    num_kept = stage.docs_out
    report = dataclasses.replace(report, stages=(*report.stages, stage), num_kept=num_kept,
                                 num_removed=report.num_read - num_kept, languages_after=languages_after)
    write_report(report, out)
    return report


def _language(record: dict[str, Any]) -> str:
    return Document(record["id"], "", stats=record.get("stats", {})).language or "unknown"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _write_thresholds(path: Path, step: LLMFilter, thresholds: dict[str, Thresholds]) -> None:
    data = {"model": step.model, "percentiles": {"head": step.head_percentile, "tail": step.tail_percentile,
                                                 "drop": step.drop_percentile},
            "bits_per_char": {lang: dataclasses.asdict(t) for lang, t in thresholds.items()}}
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
