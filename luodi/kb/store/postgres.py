"""The scale-out Store: PostgreSQL with pgvector, all knowledge bases in one schema `luodi_kb`.

    knowledge_bases(id, name, owner, embedder, dim, created_at; UNIQUE(owner, name))
    documents(id, kb_id → knowledge_bases, source, content_hash, chunks, added_at; UNIQUE(kb_id, source))
    chunks(id, kb_id, doc_id → documents, ordinal, text, page, section,
           terms, tsv = to_tsvector('simple', terms) GIN-indexed, embedding vector)

Vectors of every width share one untyped `vector` column; each knowledge base gets its own
partial HNSW index on `(embedding::vector(dim)) vector_cosine_ops WHERE kb_id = id`, made by
`create` and dropped by `drop` (pgvector's documented way to index mixed dimensions). Compared
with a table per knowledge base this keeps the schema fixed (no table names built at run time,
one set of foreign keys, `drop` is a cascading DELETE), while every search still walks an index
holding only its own knowledge base's vectors, so filtering by owner/KB never starves HNSW.
Queries spell the KB id and dim as literals so the planner can match the partial index.

Names are unique per owner, not globally: two owners may each have "handbook", and one owner's
names never decide what another may create. A database set up before that had `name UNIQUE`;
setting up the schema drops that constraint (once, under the advisory lock) and adds the
(owner, name) unique index; existing rows keep their owners.

A chunk's text, terms and vector are one row, so the text and vector indexes cannot disagree;
`replace_document` runs in one transaction. This module knows nothing about loaders or embedders.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from luodi.errors import KnowledgeBaseError
from luodi.kb.document import Chunk, Hit
from luodi.kb.store import check_name, check_text, check_vectors, kb_exists, unknown_kb
from luodi.kb.store.base import DocumentInfo, KnowledgeBaseInfo
from luodi.kb.terms import index_terms, query_terms

if TYPE_CHECKING:
    import psycopg

MAX_DIM = 2000  # pgvector's HNSW limit for `vector`
_LOCK_ID = 0x6C756F6469  # advisory lock serializing schema setup between processes ("luodi")

_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS luodi_kb;
CREATE TABLE IF NOT EXISTS luodi_kb.knowledge_bases (
    id bigserial PRIMARY KEY, name text NOT NULL, owner text NOT NULL,
    embedder text NOT NULL, dim integer NOT NULL, created_at double precision NOT NULL);
DO $$ BEGIN  -- names were globally unique before they were scoped per owner
    IF EXISTS (SELECT FROM pg_constraint WHERE conname = 'knowledge_bases_name_key'
               AND conrelid = 'luodi_kb.knowledge_bases'::regclass) THEN
        ALTER TABLE luodi_kb.knowledge_bases DROP CONSTRAINT knowledge_bases_name_key;
    END IF;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS knowledge_bases_owner_name ON luodi_kb.knowledge_bases (owner, name);
CREATE TABLE IF NOT EXISTS luodi_kb.documents (
    id bigserial PRIMARY KEY,
    kb_id bigint NOT NULL REFERENCES luodi_kb.knowledge_bases ON DELETE CASCADE,
    source text NOT NULL, content_hash text NOT NULL, chunks integer NOT NULL,
    added_at double precision NOT NULL, UNIQUE (kb_id, source));
CREATE TABLE IF NOT EXISTS luodi_kb.chunks (
    id bigserial PRIMARY KEY,
    kb_id bigint NOT NULL REFERENCES luodi_kb.knowledge_bases ON DELETE CASCADE,
    doc_id bigint NOT NULL REFERENCES luodi_kb.documents ON DELETE CASCADE,
    ordinal integer NOT NULL, text text NOT NULL, page integer, section text, terms text NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', terms)) STORED,
    embedding vector NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON luodi_kb.chunks (doc_id);
CREATE INDEX IF NOT EXISTS chunks_tsv ON luodi_kb.chunks USING gin (tsv);
"""

# score = Σ over query words t of idf(t) · tf/(tf + 1), where tf is ts_rank_cd with unit weights
# (the count of t in the chunk) and flag 32 maps it to tf/(tf + 1). That is BM25 with k1 = 1 and
# no length normalization (b = 0) — close to, but not exactly, SQLite's bm25().
_TEXT_QUERY = """
WITH words AS (
    SELECT w, plainto_tsquery('simple', w) AS q FROM unnest(%(words)s::text[]) AS w
), matches AS (
    SELECT m.id, ts_rank_cd('{{1,1,1,1}}', m.tsv, words.q, 32) AS tf,
           count(*) OVER (PARTITION BY words.w) AS df
    FROM words, LATERAL (
        SELECT id, tsv FROM luodi_kb.chunks WHERE kb_id = {kb} AND tsv @@ words.q) m
), total AS (
    SELECT coalesce(sum(chunks), 0)::float8 AS n FROM luodi_kb.documents WHERE kb_id = {kb}
), ranked AS (
    SELECT matches.id, sum(ln(1 + (total.n - df + 0.5) / (df + 0.5)) * tf) AS score
    FROM matches, total GROUP BY matches.id ORDER BY score DESC, matches.id LIMIT %(k)s
)
SELECT c.id, c.text, d.source, c.page, c.section, ranked.score
FROM ranked JOIN luodi_kb.chunks c ON c.id = ranked.id JOIN luodi_kb.documents d ON d.id = c.doc_id
ORDER BY ranked.score DESC, c.id
"""

_VECTOR_QUERY = """
WITH knn AS (
    SELECT id, embedding::vector({dim}) <=> %(v)s::vector({dim}) AS distance FROM luodi_kb.chunks
    WHERE kb_id = {kb} ORDER BY embedding::vector({dim}) <=> %(v)s::vector({dim}) LIMIT %(k)s
)
SELECT c.id, c.text, d.source, c.page, c.section, 1 - knn.distance
FROM knn JOIN luodi_kb.chunks c ON c.id = knn.id JOIN luodi_kb.documents d ON d.id = c.doc_id
ORDER BY knn.distance, c.id
"""


def _import_psycopg() -> Any:
    try:
        import psycopg
        from pgvector.psycopg import register_vector
    except ImportError as err:
        raise KnowledgeBaseError(
            f"the PostgreSQL knowledge-base store needs {err.name}: pip install 'luodi[pg]'") from err
    return psycopg, register_vector


ANALYZE_EVERY_ROWS = 2000  # chunk rows written between planner-statistics refreshes


class PostgresStore:
    """Knowledge bases in a PostgreSQL database with pgvector; see the module docstring."""

    def __init__(self, url: str) -> None:
        psycopg, register_vector = _import_psycopg()
        try:
            self._conn = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as err:
            where = psycopg.conninfo.conninfo_to_dict(url)
            raise KnowledgeBaseError(
                f"cannot connect to PostgreSQL (host {where.get('host', 'default')}, database "
                f"{where.get('dbname', 'default')}): {str(err).strip().splitlines()[-1]}") from err
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                self._conn.execute(_SCHEMA)
        except psycopg.Error as err:
            self._conn.close()
            raise KnowledgeBaseError(
                f"cannot set up the knowledge-base schema: {str(err).strip().splitlines()[0]}; "
                "the database needs the pgvector extension (CREATE EXTENSION vector)") from err
        register_vector(self._conn)
        self._errors = psycopg.errors
        self._lock = threading.RLock()  # one connection: one thread's transaction at a time
        self._rows_since_analyze = 0

    # -- knowledge bases -----------------------------------------------------------------

    def create(self, name: str, *, owner: str, embedder: str, dim: int) -> KnowledgeBaseInfo:
        check_name(name)
        if not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            raise KnowledgeBaseError(
                f"invalid vector dimension {dim!r}: the PostgreSQL store indexes 1 to {MAX_DIM}")
        try:
            with self._transaction() as conn:
                [(kb_id,)] = conn.execute(
                    "INSERT INTO luodi_kb.knowledge_bases (name, owner, embedder, dim, created_at) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (name, owner, embedder, dim, time.time())).fetchall()
                conn.execute(
                    f"CREATE INDEX chunks_hnsw_{kb_id:d} ON luodi_kb.chunks USING hnsw "
                    f"((embedding::vector({dim:d})) vector_cosine_ops) WHERE kb_id = {kb_id:d}")
        except self._errors.UniqueViolation:
            raise kb_exists(name) from None
        return self.info(name, owner=owner)

    def list(self, *, owner: str) -> list[KnowledgeBaseInfo]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT kb.name, kb.owner, kb.embedder, kb.dim, count(d.id), coalesce(sum(d.chunks), 0) "
                "FROM luodi_kb.knowledge_bases kb LEFT JOIN luodi_kb.documents d ON d.kb_id = kb.id "
                "WHERE kb.owner = %s GROUP BY kb.id ORDER BY kb.name COLLATE \"C\"", (owner,)).fetchall()
        return [KnowledgeBaseInfo(*row) for row in rows]

    def info(self, name: str, *, owner: str) -> KnowledgeBaseInfo:
        kb_id, embedder, dim = self._kb(name, owner)
        with self._lock:
            [(documents, chunks)] = self._conn.execute(
                "SELECT count(*), coalesce(sum(chunks), 0) FROM luodi_kb.documents WHERE kb_id = %s",
                (kb_id,)).fetchall()
        return KnowledgeBaseInfo(name=name, owner=owner, embedder=embedder, dim=dim,
                                 documents=documents, chunks=chunks)

    def drop(self, name: str, *, owner: str) -> None:
        kb_id, _, _ = self._kb(name, owner)
        with self._transaction() as conn:
            conn.execute("DELETE FROM luodi_kb.knowledge_bases WHERE id = %s", (kb_id,))
            conn.execute(f"DROP INDEX IF EXISTS luodi_kb.chunks_hnsw_{kb_id:d}")

    # -- documents -----------------------------------------------------------------------

    def document_hash(self, name: str, source: str, *, owner: str) -> str | None:
        check_text(source, "document name", "source")
        kb_id, _, _ = self._kb(name, owner)
        with self._lock:
            row = self._conn.execute(
                "SELECT content_hash FROM luodi_kb.documents WHERE kb_id = %s AND source = %s",
                (kb_id, source)).fetchone()
        return row[0] if row else None

    def replace_document(self, name: str, source: str, content_hash: str, chunks: Sequence[Chunk],
                         vectors: np.ndarray, *, owner: str) -> None:
        check_text(source, "document name", "source")
        kb_id, embedder, dim = self._kb(name, owner)
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(chunks):
            raise KnowledgeBaseError(
                f"expected one vector row per chunk ({len(chunks)} rows), got shape {matrix.shape}")
        check_vectors(name, dim, embedder, matrix.shape[1])
        try:
            with self._transaction() as conn:
                # The upsert locks the document's row, so two writers of one source take turns.
                [(doc_id,)] = conn.execute(
                    "INSERT INTO luodi_kb.documents (kb_id, source, content_hash, chunks, added_at) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kb_id, source) DO UPDATE SET "
                    "content_hash = excluded.content_hash, chunks = excluded.chunks, "
                    "added_at = excluded.added_at RETURNING id",
                    (kb_id, source, content_hash, len(chunks), time.time())).fetchall()
                conn.execute("DELETE FROM luodi_kb.chunks WHERE doc_id = %s", (doc_id,))
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO luodi_kb.chunks (kb_id, doc_id, ordinal, text, page, section, "
                        "terms, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        ((kb_id, doc_id, c.ordinal, _no_nul(c.text), c.page, _no_nul(c.section),
                          index_terms(c.text), v) for c, v in zip(chunks, matrix, strict=True)))
        except self._errors.ForeignKeyViolation:
            raise unknown_kb(name) from None  # dropped while we were writing
        self._analyze_after_bulk_writes(len(chunks))

    def _analyze_after_bulk_writes(self, rows: int) -> None:
        """Refresh the planner's statistics after every ANALYZE_EVERY_ROWS chunks written.

        Right after a bulk ingest the statistics still describe a small table, and the planner
        scans instead of using the text index (measured: text search 24-28 ms instead of 2-6 ms
        at 10k chunks, query p99 ~300 ms) until autovacuum's own ANALYZE comes round.
        """
        self._rows_since_analyze += rows
        if self._rows_since_analyze >= ANALYZE_EVERY_ROWS:
            with self._lock:
                self._conn.execute("ANALYZE luodi_kb.documents, luodi_kb.chunks")
            self._rows_since_analyze = 0

    def documents(self, name: str, *, owner: str) -> list[DocumentInfo]:
        kb_id, _, _ = self._kb(name, owner)
        with self._lock:
            rows = self._conn.execute(
                "SELECT source, content_hash, chunks, added_at FROM luodi_kb.documents "
                "WHERE kb_id = %s ORDER BY source COLLATE \"C\"", (kb_id,)).fetchall()
        return [DocumentInfo(*row) for row in rows]

    def delete_document(self, name: str, source: str, *, owner: str) -> bool:
        check_text(source, "document name", "source")
        kb_id, _, _ = self._kb(name, owner)
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM luodi_kb.documents WHERE kb_id = %s AND source = %s", (kb_id, source))
        return cur.rowcount > 0

    # -- search --------------------------------------------------------------------------

    def search_text(self, name: str, query: str, k: int, *, owner: str) -> list[Hit]:
        """BM25-like ranking (not exact BM25: see `_TEXT_QUERY`); any query word matches."""
        check_text(query, "query", "query")
        kb_id, _, _ = self._kb(name, owner)
        words = query_terms(query)
        if not words or k < 1:
            return []
        with self._lock:
            rows = self._conn.execute(_TEXT_QUERY.format(kb=int(kb_id)),
                                      {"words": words, "k": k}).fetchall()
        return [Hit(*row) for row in rows]

    def search_vector(self, name: str, vector: np.ndarray, k: int, *, owner: str) -> list[Hit]:
        """Nearest chunks through the knowledge base's HNSW index; score is cosine similarity."""
        kb_id, embedder, dim = self._kb(name, owner)
        query = np.ascontiguousarray(vector, dtype=np.float32)
        if query.ndim != 1:
            raise KnowledgeBaseError(f"a query vector must be one row, got shape {query.shape}")
        check_vectors(name, dim, embedder, query.shape[0])
        if k < 1:
            return []
        with self._transaction() as conn:
            # HNSW returns at most ef_search rows; ask for at least k (pgvector caps it at 1000).
            conn.execute(f"SET LOCAL hnsw.ef_search = {min(max(40, k), 1000):d}")
            rows = conn.execute(_VECTOR_QUERY.format(kb=int(kb_id), dim=int(dim)),
                                {"v": query, "k": k}).fetchall()
        return [Hit(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- helpers -------------------------------------------------------------------------

    def _kb(self, name: str, owner: str) -> tuple[int, str, int]:
        """(id, embedder, dim) of `name` if `owner` owns it; else the unknown-KB error."""
        check_name(name)
        with self._lock:
            row = self._conn.execute(
                "SELECT id, embedder, dim FROM luodi_kb.knowledge_bases WHERE name = %s AND owner = %s",
                (name, owner)).fetchone()
        if row is None:
            raise unknown_kb(name)
        return row

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        with self._lock, self._conn.transaction():
            yield self._conn


def _no_nul(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters (some PDFs yield them); drop them."""
    return text.replace("\x00", "") if text else text
