"""The embedded Store: one SQLite file per knowledge base, in a folder per owner.

    root/NAME.sqlite                      the local owner's (the CLI's) knowledge bases
    root/owners/DIGEST/NAME.sqlite        any other owner's; DIGEST = sha256(owner)[:32]

so two owners may each have a knowledge base of the same name, and one owner's names never
decide what another may create. Files written before owners had folders all lie in `root`; the
first use of a store moves each one whose `meta.owner` is not the local owner into its owner's
folder (one rename; a file another process still has open is left for a later start). The
folders are 0700 and the files 0600 (SQLite gives the -wal and -shm files the database's mode).

Opened through `apsw` (this Python's stdlib sqlite3 cannot load extensions) with `sqlite-vec`.
Each file holds:

    meta(key, value)                 owner, embedder, dim, schema_version
    documents(id, source UNIQUE, content_hash, chunks, added_at)
    chunks(id, doc_id → documents, ordinal, text, page, section)
    chunks_fts  FTS5, contentless    rowid = chunks.id, the chunk's `index_terms`; ranked by bm25()
    chunks_vec  sqlite-vec vec0      rowid = chunks.id, float[dim], cosine distance

The two virtual tables cannot take foreign keys, so every write that touches `chunks` touches
them in the same transaction (`BEGIN IMMEDIATE ... COMMIT`, WAL mode, synchronous=FULL): a
process killed mid-document leaves the previous committed state, which SQLite's WAL recovery
restores on the next open.

One file per knowledge base keeps each one self-contained (copy it, back it up, drop it by
deleting it) and lets each have its own vector width. This module knows nothing about loaders,
chunking or embedders; it stores what it is given.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from luodi.errors import KnowledgeBaseError
from luodi.kb.document import Chunk, Hit
from luodi.kb.store import check_name, check_text, check_vectors, kb_exists, unknown_kb
from luodi.kb.store.base import LOCAL_OWNER, DocumentInfo, KnowledgeBaseInfo
from luodi.kb.terms import index_terms, query_terms
from luodi.paths import create_private_file, make_private, private_dir

if TYPE_CHECKING:
    import apsw

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000  # another process ingesting into the same file holds the write lock
MAX_K = 4096  # sqlite-vec's limit on k in a KNN query
OWNERS_DIR = "owners"

_HIT_COLUMNS = "c.id, c.text, d.source, c.page, c.section"


def _schema(dim: int) -> str:
    return f"""
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE documents(
        id INTEGER PRIMARY KEY, source TEXT NOT NULL UNIQUE, content_hash TEXT NOT NULL,
        chunks INTEGER NOT NULL, added_at REAL NOT NULL);
    CREATE TABLE chunks(
        id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        ordinal INTEGER NOT NULL, text TEXT NOT NULL, page INTEGER, section TEXT);
    CREATE INDEX chunks_doc ON chunks(doc_id);
    CREATE VIRTUAL TABLE chunks_fts USING fts5(terms, content='', contentless_delete=1);
    CREATE VIRTUAL TABLE chunks_vec USING vec0(embedding float[{dim}] distance_metric=cosine);
    """


def _import_apsw() -> Any:
    try:
        import apsw
        import sqlite_vec
    except ImportError as err:
        raise KnowledgeBaseError(
            f"the SQLite knowledge-base store needs {err.name}: pip install 'luodi[kb]'") from err
    return apsw, sqlite_vec


def _connect(path: Path, *, create: bool = False) -> apsw.Connection:
    apsw, sqlite_vec = _import_apsw()
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    conn = apsw.Connection(str(path), flags=flags)
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.enable_load_extension(False)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL")
    return conn


@dataclass(slots=True)
class _Open:
    """An open knowledge-base file, its settings, and the lock that serializes its use.

    One apsw connection is shared by the store's threads; the lock keeps one thread's
    transaction from swallowing another's statements."""

    conn: apsw.Connection
    owner: str
    embedder: str
    dim: int
    lock: threading.RLock


class SqliteStore:
    """Knowledge bases as SQLite files, a folder per owner; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._open_kbs: dict[Path, _Open] = {}
        self._lock = threading.Lock()
        self._layout_checked = False

    # -- knowledge bases -----------------------------------------------------------------

    def create(self, name: str, *, owner: str, embedder: str, dim: int) -> KnowledgeBaseInfo:
        path = self._path(name, owner)
        if not isinstance(dim, int) or dim < 1:
            raise KnowledgeBaseError(f"invalid vector dimension {dim!r}: must be a positive integer")
        if path.exists():
            raise kb_exists(name)
        apsw, _ = _import_apsw()
        # Build the file aside and link it into place: a crash never leaves a half-made knowledge
        # base, and of two racing creates exactly one wins (link fails if the name exists).
        tmp = path.parent / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            private_dir(path.parent)
            create_private_file(tmp)
            _make_file(tmp, owner=owner, embedder=embedder, dim=dim)
            os.link(tmp, path)
        except FileExistsError:
            raise kb_exists(name) from None
        except (OSError, apsw.Error) as err:
            raise KnowledgeBaseError(
                f'cannot create knowledge base "{name}" in {self.root}: {err}; check that the '
                "folder is writable (or set LUODI_HOME)") from err
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)
        return self.info(name, owner=owner)

    def list(self, *, owner: str) -> list[KnowledgeBaseInfo]:
        infos = []
        for path in sorted(self._folder(owner).glob("*.sqlite")):
            try:
                infos.append(self.info(path.stem, owner=owner))
            except KnowledgeBaseError:
                continue  # another owner's, or not a knowledge base
        return infos

    def info(self, name: str, *, owner: str) -> KnowledgeBaseInfo:
        kb = self._open(name, owner)
        with kb.lock:
            [(documents, chunks)] = kb.conn.execute(
                "SELECT count(*), coalesce(sum(chunks), 0) FROM documents").fetchall()
        return KnowledgeBaseInfo(name=name, owner=kb.owner, embedder=kb.embedder, dim=kb.dim,
                                 documents=documents, chunks=chunks)

    def drop(self, name: str, *, owner: str) -> None:
        kb = self._open(name, owner)
        path = self._path(name, owner)
        with self._lock, kb.lock:
            self._open_kbs.pop(path, None)
            kb.conn.close()
            for extra in ("-wal", "-shm"):
                Path(f"{path}{extra}").unlink(missing_ok=True)
            path.unlink(missing_ok=True)

    # -- documents -----------------------------------------------------------------------

    def document_hash(self, name: str, source: str, *, owner: str) -> str | None:
        check_text(source, "document name", "source")
        kb = self._open(name, owner)
        with kb.lock:
            rows = kb.conn.execute(
                "SELECT content_hash FROM documents WHERE source = ?", (source,)).fetchall()
        return rows[0][0] if rows else None

    def replace_document(self, name: str, source: str, content_hash: str, chunks: Sequence[Chunk],
                         vectors: np.ndarray, *, owner: str) -> None:
        check_text(source, "document name", "source")
        kb = self._open(name, owner)
        vectors = _check_matrix(name, kb, chunks, vectors)
        with self._transaction(kb) as conn:
            [(doc_id,)] = conn.execute(
                "INSERT INTO documents(source, content_hash, chunks, added_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(source) DO UPDATE SET content_hash = excluded.content_hash, "
                "chunks = excluded.chunks, added_at = excluded.added_at RETURNING id",
                (source, content_hash, len(chunks), time.time())).fetchall()
            _delete_chunks(conn, doc_id)
            # Terms are computed here, inside the transaction, one chunk at a time: simpler than
            # a second pass, and SQLite readers are not blocked by a writer in WAL mode.
            for chunk, vector in zip(chunks, vectors, strict=True):
                [(chunk_id,)] = conn.execute(
                    "INSERT INTO chunks(doc_id, ordinal, text, page, section) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (doc_id, chunk.ordinal, chunk.text, chunk.page, chunk.section)).fetchall()
                conn.execute("INSERT INTO chunks_fts(rowid, terms) VALUES (?, ?)",
                             (chunk_id, index_terms(chunk.text)))
                conn.execute("INSERT INTO chunks_vec(rowid, embedding) VALUES (?, ?)",
                             (chunk_id, vector.tobytes()))

    def documents(self, name: str, *, owner: str) -> list[DocumentInfo]:
        kb = self._open(name, owner)
        with kb.lock:
            rows = list(kb.conn.execute(
                "SELECT source, content_hash, chunks, added_at FROM documents ORDER BY source"))
        return [DocumentInfo(*row) for row in rows]

    def delete_document(self, name: str, source: str, *, owner: str) -> bool:
        check_text(source, "document name", "source")
        kb = self._open(name, owner)
        with self._transaction(kb) as conn:
            rows = conn.execute("SELECT id FROM documents WHERE source = ?", (source,)).fetchall()
            if not rows:
                return False
            _delete_chunks(conn, rows[0][0])
            conn.execute("DELETE FROM documents WHERE id = ?", rows[0])
        return True

    # -- search --------------------------------------------------------------------------

    def search_text(self, name: str, query: str, k: int, *, owner: str) -> list[Hit]:
        """BM25 (FTS5's bm25(), k1=1.2, b=0.75) over the chunks' terms; any query word matches."""
        check_text(query, "query", "query")
        kb = self._open(name, owner)
        terms = query_terms(query)
        if not terms or k < 1:
            return []
        # Each word a quoted FTS5 string, so user punctuation (", *, :, NEAR) is only text.
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        with kb.lock:
            rows = list(kb.conn.execute(
                f"WITH ranked AS (SELECT rowid AS id, bm25(chunks_fts) AS rank FROM chunks_fts "
                f"WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?) "
                f"SELECT {_HIT_COLUMNS}, -ranked.rank FROM ranked JOIN chunks c ON c.id = ranked.id "
                f"JOIN documents d ON d.id = c.doc_id ORDER BY ranked.rank, c.id", (match, k)))
        return [Hit(*row) for row in rows]

    def search_vector(self, name: str, vector: np.ndarray, k: int, *, owner: str) -> list[Hit]:
        """Exact (brute-force) nearest chunks; score is the cosine similarity, 1 - distance."""
        kb = self._open(name, owner)
        query = np.ascontiguousarray(vector, dtype=np.float32)
        if query.ndim != 1:
            raise KnowledgeBaseError(f"a query vector must be one row, got shape {query.shape}")
        check_vectors(name, kb.dim, kb.embedder, query.shape[0])
        if k < 1:
            return []
        with kb.lock:
            rows = list(kb.conn.execute(
                f"WITH knn AS (SELECT rowid AS id, distance FROM chunks_vec "
                f"WHERE embedding MATCH ? AND k = ?) "
                f"SELECT {_HIT_COLUMNS}, 1.0 - knn.distance FROM knn JOIN chunks c ON c.id = knn.id "
                f"JOIN documents d ON d.id = c.doc_id ORDER BY knn.distance, c.id",
                (query.tobytes(), min(k, MAX_K))))
        return [Hit(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            for kb in self._open_kbs.values():
                with kb.lock:
                    kb.conn.close()
            self._open_kbs.clear()

    # -- helpers -------------------------------------------------------------------------

    def _path(self, name: str, owner: str) -> Path:
        return self._folder(owner) / f"{check_name(name)}.sqlite"

    def _folder(self, owner: str) -> Path:
        """Where `owner`'s knowledge bases live (once legacy files have been moved to theirs)."""
        with self._lock:
            if not self._layout_checked:
                _adopt_legacy_files(self.root)
                self._layout_checked = True
        return self.root if owner == LOCAL_OWNER else _owner_folder(self.root, owner)

    def _open(self, name: str, owner: str) -> _Open:
        """The open knowledge base `name`, if `owner` owns it; else the unknown-KB error."""
        path = self._path(name, owner)
        with self._lock:
            kb = self._open_kbs.get(path)
            if kb is None:
                if not path.is_file():
                    raise unknown_kb(name)
                kb = self._open_kbs[path] = _open_file(name, path)
        if kb.owner != owner:  # a file copied into the wrong folder: still not this owner's
            raise unknown_kb(name)
        return kb

    @contextmanager
    def _transaction(self, kb: _Open) -> Iterator[apsw.Connection]:
        with kb.lock:
            kb.conn.execute("BEGIN IMMEDIATE")
            try:
                yield kb.conn
            except BaseException:
                kb.conn.execute("ROLLBACK")
                raise
            kb.conn.execute("COMMIT")


def _owner_folder(root: Path, owner: str) -> Path:
    # A digest, not the owner itself: any owner string is a safe folder name, and the folder
    # names tell a reader of the disk nothing about who the owners are.
    return root / OWNERS_DIR / hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32]


def _adopt_legacy_files(root: Path) -> None:
    """Move knowledge bases written before owner folders (all in `root`) that belong to an owner
    other than the local one into that owner's folder; tighten what an older Luodi left 0755/0644."""
    if not root.is_dir():
        return
    try:
        private_dir(root)
    except OSError:
        return  # not ours (another user's folder): use it as it is
    for path in sorted(root.glob("*.sqlite")):
        try:
            make_private(path)
            kb = _open_file(path.stem, path)
            kb.conn.close()  # the last connection to close checkpoints and removes the -wal
        except (OSError, KnowledgeBaseError):
            continue  # not a knowledge base, or not ours to touch: left as it is
        if kb.owner == LOCAL_OWNER or Path(f"{path}-wal").exists():
            continue  # the CLI's, or still open in another process: moved on a later start
        target = _owner_folder(root, kb.owner) / path.name
        try:
            private_dir(target.parent)
            os.link(path, target)
            path.unlink()
        except OSError:
            continue  # a name clash or a concurrent mover: the file stays, invisible to others


def _make_file(path: Path, *, owner: str, embedder: str, dim: int) -> None:
    conn = _connect(path, create=True)
    try:
        conn.execute("PRAGMA journal_mode = WAL")  # persistent: every later open is in WAL mode
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_schema(dim))
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("owner", owner), ("embedder", embedder), ("dim", str(dim)),
            ("schema_version", str(SCHEMA_VERSION))])
        conn.execute("COMMIT")
    finally:
        conn.close()


def _open_file(name: str, path: Path) -> _Open:
    apsw, _ = _import_apsw()
    try:
        conn = _connect(path)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        return _Open(conn=conn, owner=meta["owner"], embedder=meta["embedder"],
                     dim=int(meta["dim"]), lock=threading.RLock())
    except (apsw.Error, KeyError, ValueError) as err:
        raise KnowledgeBaseError(
            f'cannot open knowledge base "{name}" at {path}: not a Luodi knowledge base or damaged '
            f"({type(err).__name__}: {err}); move the file aside and recreate it") from err


def _check_matrix(name: str, kb: _Open, chunks: Sequence[Chunk], vectors: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(chunks):
        raise KnowledgeBaseError(
            f"expected one vector row per chunk ({len(chunks)} rows), got shape {matrix.shape}")
    check_vectors(name, kb.dim, kb.embedder, matrix.shape[1])
    return matrix


def _delete_chunks(conn: apsw.Connection, doc_id: int) -> None:
    """Remove a document's chunks from all three tables (the caller holds the transaction)."""
    ids = "SELECT id FROM chunks WHERE doc_id = ?"
    conn.execute(f"DELETE FROM chunks_fts WHERE rowid IN ({ids})", (doc_id,))
    conn.execute(f"DELETE FROM chunks_vec WHERE rowid IN ({ids})", (doc_id,))
    conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
