"""Corpus cleaning: documents through normalizers, language ID, rule filters, PII masking and
deduplication, with a funnel report of what each stage kept and dropped, and why.

`clean(inputs, out)` is the entry point; `luodi corpus clean` is its command. This package sits
above the engine and beside kb (it reuses kb's HTML loader); it never imports the server or CLI.
"""

from __future__ import annotations

from pathlib import Path

from luodi.corpus.document import Document, Drop
from luodi.corpus.report import FunnelReport, StageReport
from luodi.errors import LuodiError

EXECUTORS = ("local", "ray")

__all__ = ["Document", "Drop", "FunnelReport", "StageReport", "clean"]


def clean(inputs: list[Path], out: Path, *, languages: tuple[str, ...] = ("zh", "en"), recipe: Path | None = None,
          executor: str = "local", workers: int = 1, ray_address: str | None = None,
          progress: bool = False) -> FunnelReport:
    """Cleans the documents in `inputs` (JSONL, text, HTML, Parquet files or folders) into
    out/kept.jsonl, out/removed.jsonl, out/report.json and out/report.md.

    `languages` overrides the recipe's allow-list; `recipe` defaults to `luodi corpus recipe`.
    `executor` "local" runs `workers` processes; "ray" runs `workers` Ray tasks at a time on a
    local Ray, or on the cluster at `ray_address`. Both give byte-identical output.
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
    if executor == "ray":
        from luodi.corpus.executor_ray import run_ray

        return run_ray([Path(p) for p in inputs], Path(out), plan, workers=workers, address=ray_address,
                       progress=progress)
    return run_local([Path(p) for p in inputs], Path(out), plan, workers=workers, progress=progress)
