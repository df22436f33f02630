"""The Store protocol: where a knowledge base keeps its documents, chunks, vectors and BM25 index.

Two implementations pass one shared test suite (tests/kb/test_store.py): `SqliteStore` (the
embedded default, one SQLite file per knowledge base) and `PostgresStore` (pgvector, for scale).

Ownership: every knowledge base has an `owner` (the server passes the API key's id, which is
never reused; the CLI passes "local"). Names are scoped per owner: two owners may each have a
knowledge base called "handbook", and another owner's knowledge base is invisible — listing skips
it, creating its name succeeds, and opening, searching or dropping it raises
`KnowledgeBaseNotFoundError` exactly as for a name nobody has.

Ingestion is transactional per document and idempotent by content hash: `replace_document`
swaps all of a source's chunks in one transaction, so a process killed mid-way leaves either the
old version or the new one, never a mix, and never orphans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from luodi.kb.document import Chunk, Hit

LOCAL_OWNER = "local"  # who owns what the CLI makes, and what a server without API keys makes


@dataclass(frozen=True, slots=True)
class KnowledgeBaseInfo:
    name: str
    owner: str
    embedder: str  # the embedder's name: vectors from another embedder are meaningless here
    dim: int
    documents: int
    chunks: int


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    source: str  # the document's name as added (a path relative to what the user passed)
    content_hash: str  # sha256 of the file's bytes
    chunks: int
    added_at: float  # unix time


class Store(Protocol):
    def create(self, name: str, *, owner: str, embedder: str, dim: int) -> KnowledgeBaseInfo:
        """Make an empty knowledge base; `KnowledgeBaseExistsError` if this owner has `name`."""

    def list(self, *, owner: str) -> list[KnowledgeBaseInfo]: ...

    def info(self, name: str, *, owner: str) -> KnowledgeBaseInfo:
        """`KnowledgeBaseError` if there is no such knowledge base for this owner."""

    def drop(self, name: str, *, owner: str) -> None: ...

    def document_hash(self, name: str, source: str, *, owner: str) -> str | None:
        """The stored content hash of `source`, or None if it is not in the knowledge base."""

    def replace_document(self, name: str, source: str, content_hash: str, chunks: Sequence[Chunk],
                         vectors: np.ndarray, *, owner: str) -> None:
        """Put `source` with these chunks (and their L2-normalized float32 vectors, one row each)
        in place of whatever `source` had, in one transaction. `KnowledgeBaseError` if the
        vectors' width is not the knowledge base's `dim`."""

    def documents(self, name: str, *, owner: str) -> list[DocumentInfo]: ...

    def delete_document(self, name: str, source: str, *, owner: str) -> bool:
        """Remove `source` and its chunks; False if it was not there."""

    def search_text(self, name: str, query: str, k: int, *, owner: str) -> list[Hit]:
        """BM25 over `luodi.kb.terms.index_terms` of each chunk, any query word matching; best
        first, `score` higher is better. (PostgreSQL ranks BM25-like, not exact BM25.)"""

    def search_vector(self, name: str, vector: np.ndarray, k: int, *, owner: str) -> list[Hit]:
        """Nearest chunks by cosine similarity to `vector` (L2-normalized); best first, `score`
        the cosine similarity."""

    def close(self) -> None: ...
