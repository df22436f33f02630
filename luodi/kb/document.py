"""What a loader extracts and what the store keeps: text with its place in the source file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Block:
    """A run of text a loader took from a document: a paragraph, a table, an OCRed page region.

    `page` is 1-based for paged formats (pdf) and None otherwise; `section` is the nearest
    heading above the block (None before the first one). `heading` marks a block that *is* a
    heading, so chunking can start a new chunk there.
    """

    text: str
    page: int | None = None
    section: str | None = None
    heading: bool = False


@dataclass(frozen=True, slots=True)
class Chunk:
    """A retrievable passage: one or more blocks' text within a token budget, with its place."""

    text: str
    page: int | None
    section: str | None
    ordinal: int  # position of the chunk within its document, from 0


@dataclass(frozen=True, slots=True)
class Hit:
    """A chunk found by a search, with where it came from. `score`: higher is better."""

    chunk_id: int
    text: str
    source: str
    page: int | None
    section: str | None
    score: float

    def as_json(self) -> dict:
        return {"text": self.text, "source": self.source, "page": self.page,
                "section": self.section, "score": self.score}
