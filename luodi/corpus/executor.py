"""The local executor: shards of documents through the per-document steps in worker processes,
then the corpus-wide steps once, in input order, into kept.jsonl and removed.jsonl.

Owns sharding, bounded memory (at most two shards per worker in flight), and resuming: each
shard's result is written to a temporary file and renamed into place, so after a kill -9 a
rerun with the same inputs and recipe reuses every finished shard and redoes only the rest;
the final files are renamed into place the same way. Output depends only on inputs and recipe,
never on the number of workers. `run_sharded` is that skeleton, shared with the Ray executor
(executor_ray.py): the executors differ only in where `clean_shard` runs. Knows nothing about
the CLI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from luodi.corpus.document import Document
from luodi.corpus.pipeline import Removed, Tallies, run_document
from luodi.corpus.readers import ReadError, read_inputs
from luodi.corpus.recipe import Recipe
from luodi.corpus.report import FunnelReport, build_report, write_report
from luodi.paths import write_text_atomic
from luodi.progress import Advance, counter_if

WORK_DIR = ".work"

# process(unfinished shards as (documents, result path), advance): commits every one of them
ProcessShards = Callable[[Iterator[tuple[list[Document], Path]], Advance], None]


def run_local(inputs: list[Path], out: Path, recipe: Recipe, workers: int = 1,
              progress: bool = False) -> FunnelReport:
    """Cleans `inputs` into `out`; resumes from the shards a previous identical run finished."""
    def process(todo: Iterator[tuple[list[Document], Path]], advance: Advance) -> None:
        _process_local(todo, recipe, workers, advance)

    return run_sharded(inputs, out, recipe, process, progress=progress)


def run_sharded(inputs: list[Path], out: Path, recipe: Recipe, process: ProcessShards,
                progress: bool = False) -> FunnelReport:
    """Reads `inputs` into shards, has `process` commit every shard not finished by an earlier
    identical run, then runs the corpus-wide steps over all of them in input order.

    `process(todo, advance)` gets the unfinished shards as (documents, result path) pairs and
    must write each one's result there (`clean_shard`, atomically) and call `advance(len(docs))`.
    """
    out.mkdir(parents=True, exist_ok=True)
    shards = _prepare_work_dir(out / WORK_DIR, _fingerprint(inputs, recipe))
    errors: list[str] = []
    counts = {"shards": 0, "resumed": 0}

    def todo(advance: Advance) -> Iterator[tuple[list[Document], Path]]:
        for index, docs in enumerate(_batches(read_inputs(inputs, recipe.text_field, recipe.id_field),
                                              recipe.shard_size, errors)):
            counts["shards"] += 1
            if _shard_path(shards, index).exists():
                counts["resumed"] += 1
                advance(len(docs))
                continue
            yield docs, _shard_path(shards, index)

    with counter_if("cleaning", progress) as advance:
        process(todo(advance), advance)
    report = _finish(out, shards, counts["shards"], recipe, errors, counts["resumed"])
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    return report


def _process_local(todo: Iterable[tuple[list[Document], Path]], recipe: Recipe, workers: int,
                   advance: Advance) -> None:
    """The shards in worker processes, at most two per worker in flight (one process: inline)."""
    with _pool(workers) as pool:
        pending: deque[Future[int]] = deque()
        for docs, path in todo:
            if pool is None:
                advance(process_shard(recipe, docs, path))
                continue
            pending.append(pool.submit(process_shard, recipe, docs, path))
            while len(pending) >= 2 * workers:
                advance(pending.popleft().result())
        while pending:
            advance(pending.popleft().result())


def process_shard(recipe: Recipe, docs: list[Document], path: Path) -> int:
    """Runs one shard's documents through the per-document steps and commits the result."""
    write_text_atomic(path, clean_shard(recipe, docs))
    return len(docs)


def clean_shard(recipe: Recipe, docs: list[Document]) -> str:
    """One shard's documents through the per-document steps: its result file's text (JSON)."""
    steps, corpus_steps = recipe.build_document_steps(), recipe.build_corpus_steps()
    tallies = Tallies([s.name for s in steps], recipe.sample_rejects)
    records = []
    for doc in docs:
        result = run_document(doc, steps, tallies)
        if isinstance(result, Removed):
            records.append({"id": result.id, "stage": result.stage, "reason": result.reason, "text": result.text})
        else:
            records.append({"id": result.id, "text": result.text, "metadata": result.metadata,
                            "stats": result.stats, "keys": [s.key(result) for s in corpus_steps]})
    return json.dumps({"records": records, "tallies": tallies.stages, "languages": tallies.languages},
                      ensure_ascii=False)


def _finish(out: Path, shards: Path, num_shards: int, recipe: Recipe, errors: list[str],
            num_resumed: int) -> FunnelReport:
    """The corpus-wide steps over every shard in input order; kept.jsonl, removed.jsonl, reports."""
    corpus_steps = recipe.build_corpus_steps()
    tallies = Tallies([s.name for s in recipe.document_steps] + [s.name for s in corpus_steps],
                      recipe.sample_rejects)
    languages_after: dict[str, int] = {}
    num_read = num_kept = 0
    kept_tmp, removed_tmp = out / "kept.jsonl.tmp", out / "removed.jsonl.tmp"
    with kept_tmp.open("w", encoding="utf-8") as kept, removed_tmp.open("w", encoding="utf-8") as removed:
        for index in range(num_shards):
            shard = json.loads(_shard_path(shards, index).read_text(encoding="utf-8"))
            tallies.merge(shard["tallies"])
            for language, n in shard["languages"].items():
                tallies.languages[language] = tallies.languages.get(language, 0) + n
            for record in shard["records"]:
                num_read += 1
                dropped = record if "reason" in record else _decide(record, corpus_steps, tallies)
                if dropped is not None:
                    removed.write(_line({"id": dropped["id"], "stage": dropped["stage"], "reason": dropped["reason"]}))
                    continue
                num_kept += 1
                language = Document(record["id"], "", stats=record["stats"]).language or "unknown"
                languages_after[language] = languages_after.get(language, 0) + 1
                kept.write(_line(_kept_line(record)))
    kept_tmp.replace(out / "kept.jsonl")
    removed_tmp.replace(out / "removed.jsonl")
    report = build_report(tallies.stages, num_read=num_read, num_kept=num_kept, num_removed=num_read - num_kept,
                          languages_before=tallies.languages, languages_after=languages_after,
                          input_errors=tuple(errors), num_shards=num_shards, num_resumed_shards=num_resumed)
    write_report(report, out)
    return report


def _decide(record: dict[str, Any], corpus_steps: list[Any], tallies: Tallies) -> dict[str, str] | None:
    """Where a corpus-wide step drops this kept-so-far document, or None if all keep it."""
    doc = Document(record["id"], record["text"])
    for step, key in zip(corpus_steps, record["keys"]):
        tallies.enter(step.name, doc.text)
        reason = step.decide(doc.id, key)
        if reason is not None:
            tallies.drop(Removed(doc.id, step.name, reason, doc.text))
            return {"id": doc.id, "stage": step.name, "reason": reason}
        tallies.forward(step.name, doc)
    return None


def _kept_line(record: dict[str, Any]) -> dict[str, Any]:
    line = {"id": record["id"], "text": record["text"], "stats": record["stats"]}
    if record["metadata"]:
        line["metadata"] = record["metadata"]
    return line


def _batches(items: Iterable[Document | ReadError], size: int, errors: list[str]) -> Iterator[list[Document]]:
    """Documents in lists of `size`; read errors go to `errors` (the same ones on every run)."""
    batch: list[Document] = []
    for item in items:
        if isinstance(item, ReadError):
            errors.append(str(item))
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pool(workers: int) -> Any:
    from contextlib import nullcontext

    if workers <= 1:
        return nullcontext(None)
    # spawn: the parent may hold threads (the progress display), which fork would copy mid-state
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))


def _fingerprint(inputs: list[Path], recipe: Recipe) -> str:
    """What a run's result depends on: the recipe and every input file's path, size and mtime."""
    files = []
    for path in inputs:
        path = Path(path)
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in found:
            stat = file.stat() if file.exists() else None
            files.append([str(file.resolve()), stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    data = json.dumps({"recipe": recipe.fingerprint(), "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()


def _prepare_work_dir(work: Path, fingerprint: str) -> Path:
    """The shard folder, emptied first when it belongs to a run with other inputs or recipe."""
    marker = work / "fingerprint"
    if work.exists() and (not marker.exists() or marker.read_text() != fingerprint):
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        write_text_atomic(marker, fingerprint)
    return work / "shards"


def _shard_path(shards: Path, index: int) -> Path:
    return shards / f"{index:06d}.json"


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
