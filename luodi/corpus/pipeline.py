"""The pipeline: documents through the steps in order, each step counting what it forwards and
what it drops, and why.

Owns the per-stage tally (documents, bytes and characters in and out, drops per reason, a few
sampled rejects per reason, counts of edits such as masked PII) and how tallies merge, in input
order, across shards. Knows nothing about files, shards or processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from luodi.corpus.document import Document, Drop

LANGUAGE_STEP = "language"
SAMPLE_CHARS = 300  # characters of a rejected document kept as its sample


@dataclass(frozen=True, slots=True)
class Removed:
    """A document a stage dropped, and why."""

    id: str
    stage: str
    reason: str
    text: str


def new_tally() -> dict[str, Any]:
    return {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "chars_in": 0, "chars_out": 0,
            "drops": {}, "samples": {}, "counts": {}}


class Tallies:
    """One tally per stage, JSON-ready, in stage order."""

    def __init__(self, stages: Iterable[str], sample_rejects: int = 5) -> None:
        self.stages: dict[str, dict[str, Any]] = {name: new_tally() for name in stages}
        self.sample_rejects = sample_rejects
        self.languages: dict[str, int] = {}  # as the language step found them, before any drop

    def enter(self, stage: str, text: str) -> None:
        tally = self.stages[stage]
        tally["docs_in"] += 1
        tally["chars_in"] += len(text)
        tally["bytes_in"] += len(text.encode())

    def forward(self, stage: str, doc: Document) -> None:
        tally = self.stages[stage]
        tally["docs_out"] += 1
        tally["chars_out"] += len(doc.text)
        tally["bytes_out"] += len(doc.text.encode())
        found = doc.stats.get(stage)
        if isinstance(found, dict):  # numeric findings (masked PII, removed lines) are summed
            for key, value in found.items():
                if isinstance(value, bool | int) and value:
                    tally["counts"][key] = tally["counts"].get(key, 0) + int(value)

    def drop(self, removed: Removed) -> None:
        tally = self.stages[removed.stage]
        tally["drops"][removed.reason] = tally["drops"].get(removed.reason, 0) + 1
        samples = tally["samples"].setdefault(removed.reason, [])
        if len(samples) < self.sample_rejects:
            samples.append({"id": removed.id, "text": removed.text[:SAMPLE_CHARS]})

    def merge(self, other: dict[str, dict[str, Any]]) -> None:
        """Adds another set of tallies (a later shard's) to these."""
        for stage, theirs in other.items():
            ours = self.stages.setdefault(stage, new_tally())
            for key in ("docs_in", "docs_out", "bytes_in", "bytes_out", "chars_in", "chars_out"):
                ours[key] += theirs[key]
            for key in ("drops", "counts"):
                for name, n in theirs[key].items():
                    ours[key][name] = ours[key].get(name, 0) + n
            for reason, samples in theirs["samples"].items():
                kept = ours["samples"].setdefault(reason, [])
                kept.extend(samples[: self.sample_rejects - len(kept)])


def run_document(doc: Document, steps: list[Any], tallies: Tallies) -> Document | Removed:
    """The document after every step, or where and why a step dropped it."""
    for step in steps:
        tallies.enter(step.name, doc.text)
        result = step(doc)
        if step.name == LANGUAGE_STEP:
            language = result.language or "unknown"
            tallies.languages[language] = tallies.languages.get(language, 0) + 1
        if isinstance(result, Drop):
            removed = Removed(doc.id, step.name, result.reason, doc.text)
            tallies.drop(removed)
            return removed
        doc = result
        tallies.forward(step.name, doc)
    return doc


def run_documents(docs: Iterable[Document], steps: list[Any], tallies: Tallies) -> Iterator[Document | Removed]:
    """Each document's outcome, in input order."""
    for doc in docs:
        yield run_document(doc, steps, tallies)
