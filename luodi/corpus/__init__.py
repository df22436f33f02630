"""Corpus cleaning: documents through normalizers, language ID, rule filters, PII masking,
deduplication and (with an LLM) a distilled quality classifier and a bits-per-character fine
filter, with a funnel report of what each stage kept and dropped, and why.

`clean(inputs, out)` is the entry point; `luodi corpus clean` is its command. This package sits
above the engine and beside kb (it reuses kb's HTML loader); it never imports the server or CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from luodi.corpus.document import Document, Drop
from luodi.corpus.report import FunnelReport, StageReport
from luodi.errors import LuodiError

EXECUTORS = ("local", "ray")

__all__ = ["Document", "Drop", "FunnelReport", "StageReport", "clean"]


def clean(inputs: list[Path], out: Path, *, languages: tuple[str, ...] = ("zh", "en"), recipe: Path | None = None,
          executor: str = "local", workers: int = 1, ray_address: str | None = None,
          progress: bool = False, llm_filter: str | None = None) -> FunnelReport:
    """Cleans the documents in `inputs` (JSONL, text, HTML, Parquet files or folders) into
    out/kept.jsonl, out/removed.jsonl, out/report.json and out/report.md.

    `languages` overrides the recipe's allow-list; `recipe` defaults to `luodi corpus recipe`.
    `executor` "local" runs `workers` processes; "ray" runs `workers` Ray tasks at a time on a
    local Ray, or on the cluster at `ray_address`. Both give byte-identical output.
    `llm_filter` (a model name or path) switches on the recipe's LLM steps: a quality classifier
    trained on a sample the LLM scores, and the LLM fine filter over the survivors.
    """
    from luodi.corpus.executor import run_local
    from luodi.corpus.recipe import load_recipe

    if executor not in EXECUTORS:
        raise LuodiError(f"unknown executor {executor!r}; available: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise LuodiError(f"--workers must be at least 1, got {workers}")
    if ray_address is not None and executor != "ray":
        raise LuodiError(f"--ray-address {ray_address!r} needs --executor ray (got {executor!r})")
    plan = load_recipe(recipe)
    if languages:
        plan = plan.with_languages(tuple(languages))
    plan = _with_llm_steps(plan, llm_filter, [Path(p) for p in inputs], Path(out), progress)
    if executor == "ray":
        from luodi.corpus.executor_ray import run_ray

        report = run_ray([Path(p) for p in inputs], Path(out), plan, workers=workers, address=ray_address,
                         progress=progress)
    else:
        report = run_local([Path(p) for p in inputs], Path(out), plan, workers=workers, progress=progress)
    for step in plan.build_final_steps():
        report = _apply_final_step(step, Path(out), plan, report, progress)
    return report


def _with_llm_steps(plan: Any, model: str | None, inputs: list[Path], out: Path, progress: bool) -> Any:
    """The recipe with its LLM steps on (model given or named in it) or dropped, the quality
    classifier trained on a sample when the recipe names none."""
    from luodi.corpus.quality import Quality, train_for_corpus

    plan = plan.with_llm_model(model)
    quality = next((s for s in plan.document_steps if s.name == Quality.name), None)
    if quality is not None and not quality.params.get("classifier"):
        plan = train_for_corpus(inputs, out, plan, progress=progress)
    return plan


def _apply_final_step(step: Any, out: Path, plan: Any, report: FunnelReport, progress: bool) -> FunnelReport:
    from luodi.corpus.llm_filter import apply_llm_filter

    return apply_llm_filter(out, step, report, sample_rejects=plan.sample_rejects, progress=progress)
