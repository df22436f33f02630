"""Put files into a knowledge base: find them, skip the unchanged, load, chunk, embed, store.

Idempotent by content hash: a file whose bytes are already stored under its source name is
skipped, a changed one replaces its old chunks, and each document lands in one store transaction,
so a killed run leaves a consistent store and a rerun finishes the rest. A file that fails to
load, or is over an ingestion limit (`limits.IngestLimits`), is reported and skipped; the others
go on. Each file gets its own `IngestBudget`, checked between embedding batches too; a
cancelled ingestion stops at the next check and stores nothing more.

This module orchestrates; it must not know file formats (loaders), storage (store) or models
(embedder) beyond their interfaces.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from luodi.errors import DocumentError, KnowledgeBaseError
from luodi.kb.chunking import chunk_blocks
from luodi.kb.embedding import Embedder
from luodi.kb.ingest.limits import DEFAULT_LIMITS, IngestBudget, IngestLimits
from luodi.kb.ingest.loaders import SUPPORTED_SUFFIXES, load_document
from luodi.kb.store.base import Store

EMBED_BATCH = 64  # chunks embedded between two budget checks


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: Path
    source: str  # the name the knowledge base knows it by


@dataclass(slots=True)
class IngestReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    chunks: int = 0
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return len(self.added) + len(self.replaced) + len(self.unchanged) + len(self.failed)


# What the caller sees after each file: (source, chunks stored for it; 0 when skipped or failed).
ProgressCallback = Callable[[SourceFile, int], None]


def collect_files(paths: Iterable[Path]) -> list[SourceFile]:
    """Files under `paths` (folders recursively) with a supported suffix, sorted.

    A file's source name is its path relative to the folder it was found under, prefixed by that
    folder's name (`docs/hr/leave.md`); a file named directly is known by its file name.
    """
    found: dict[str, SourceFile] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.suffix.lower() in SUPPORTED_SUFFIXES and not _hidden(file.relative_to(path)):
                    source = (Path(path.resolve().name) / file.relative_to(path)).as_posix()
                    found[source] = SourceFile(file, source)
        elif path.is_file():
            found[path.name] = SourceFile(path, path.name)
        else:
            raise DocumentError(f"{path}: no such file or folder")
    return list(found.values())


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Ingestor:
    store: Store
    embedder: Embedder
    kb: str
    owner: str
    max_tokens: int = 200
    overlap_tokens: int = 40
    limits: IngestLimits = DEFAULT_LIMITS

    def add(self, files: Sequence[SourceFile], progress: ProgressCallback | None = None,
            cancel: threading.Event | None = None) -> IngestReport:
        """Add each file, reporting and skipping those that fail; stops (IngestCancelledError)
        once `cancel` is set."""
        self._check_embedder()
        report = IngestReport()
        start = time.perf_counter()
        for file in files:
            stored = self._add_one(file, report, IngestBudget(self.limits, cancel, name=str(file.path)))
            if progress is not None:
                progress(file, stored)
        report.seconds = time.perf_counter() - start
        return report

    def add_file(self, file: SourceFile, budget: IngestBudget) -> tuple[str, int]:
        """Add one file within `budget`: ("added" | "replaced" | "unchanged", chunks stored).

        Raises what loading raises (DocumentError, IngestLimitError, IngestCancelledError, OSError);
        nothing is stored then."""
        self._check_embedder()
        report = IngestReport()
        stored = self._store_one(file, report, budget)
        status = "added" if report.added else "replaced" if report.replaced else "unchanged"
        return status, stored

    def _check_embedder(self) -> None:
        info = self.store.info(self.kb, owner=self.owner)
        if info.embedder != self.embedder.name:
            raise KnowledgeBaseError(
                f"knowledge base {self.kb!r} was built with the {info.embedder!r} embedder, not "
                f"{self.embedder.name!r}: add documents with the same embedder")

    def _add_one(self, file: SourceFile, report: IngestReport, budget: IngestBudget) -> int:
        try:
            return self._store_one(file, report, budget)
        except (DocumentError, OSError) as exc:
            report.failed.append((file.source, str(exc)))
            return 0

    def _store_one(self, file: SourceFile, report: IngestReport, budget: IngestBudget) -> int:
        digest = content_hash(file.path)
        previous = self.store.document_hash(self.kb, file.source, owner=self.owner)
        if previous == digest:
            report.unchanged.append(file.source)
            return 0
        chunks = chunk_blocks(load_document(file.path, budget), self.embedder.count_tokens,
                              max_tokens=self.max_tokens, overlap_tokens=self.overlap_tokens)
        vectors = self._embed([chunk.text for chunk in chunks], budget)
        budget.check()  # the last chance to give up: past this the document is stored whole
        self.store.replace_document(self.kb, file.source, digest, chunks, vectors, owner=self.owner)
        (report.added if previous is None else report.replaced).append(file.source)
        report.chunks += len(chunks)
        return len(chunks)

    def _embed(self, texts: list[str], budget: IngestBudget) -> np.ndarray:
        """The passages' vectors, in batches with a budget check before each."""
        parts = [np.empty((0, self.embedder.dim), dtype=np.float32)]
        for start in range(0, len(texts), EMBED_BATCH):
            budget.check()
            parts.append(self.embedder.embed_passages(texts[start : start + EMBED_BATCH]))
        return np.concatenate(parts)
