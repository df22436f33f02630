"""Fixtures for the knowledge-base tests: a fresh store of each kind, and a real PostgreSQL.

`backend` is parametrized over "sqlite" and "postgres"; each `Backend` makes fresh stores and can
look *under* them (`audit`, `writer_in_transaction`) with plain SQL, so crash tests can check
the tables themselves rather than trust the store's own answers.

PostgreSQL (with pgvector) is started once per session by `local_postgres`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Iterator, Protocol

import pytest

from local_postgres import Postgres, PostgresUnavailable, local_postgres

from luodi.kb.store.base import Store

KB = "kb"  # the knowledge-base name the crash tests use


@pytest.fixture(scope="module", autouse=True)
def luodi_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep jieba's cache (and anything else under LUODI_HOME) out of the real home; children
    started by the tests inherit it. Module scope: the setting must not outlive tests/kb."""
    home = tmp_path_factory.mktemp("luodi_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LUODI_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pytest.importorskip("pgserver", reason="pip install 'luodi[pg]' for PostgreSQL tests")
    try:
        with local_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


class Backend(Protocol):
    """Makes fresh stores of one kind and inspects their tables directly."""

    kind: str
    location: str  # what the crash test's child process opens

    def new_store(self) -> Store: ...

    def audit(self, name: str) -> dict[str, Any]:
        """{"documents": {source: (recorded chunks, chunk rows, text-index rows, vector rows)},
        "orphans": rows in any index without a chunk, or chunks without a document}."""
        ...

    def writer_in_transaction(self) -> bool:
        """Whether some connection is in the middle of a write transaction right now."""
        ...

    def close(self) -> None: ...


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        self.stores: list[Store] = []

    def new_store(self) -> Store:
        from luodi.kb.store.sqlite import SqliteStore

        self.stores.append(SqliteStore(self.root))
        return self.stores[-1]

    def _connect(self, name: str) -> Any:
        import apsw
        import sqlite_vec

        [path] = self.root.rglob(f"{name}.sqlite")  # in its owner's folder; one owner per name here
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        return conn

    def audit(self, name: str) -> dict[str, Any]:
        conn = self._connect(name)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
            ids = "SELECT id FROM chunks WHERE doc_id = d.id"
            documents = {row[0]: tuple(row[1:]) for row in conn.execute(
                f"SELECT d.source, d.chunks, (SELECT count(*) FROM chunks WHERE doc_id = d.id), "
                f"(SELECT count(*) FROM chunks_fts WHERE rowid IN ({ids})), "
                f"(SELECT count(*) FROM chunks_vec WHERE rowid IN ({ids})) FROM documents d")}
            [(orphans,)] = conn.execute(
                "SELECT (SELECT count(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents))"
                " + (SELECT count(*) FROM chunks_fts WHERE rowid NOT IN (SELECT id FROM chunks))"
                " + (SELECT count(*) FROM chunks_vec WHERE rowid NOT IN (SELECT id FROM chunks))"
            ).fetchall()
        finally:
            conn.close()
        return {"documents": documents, "orphans": orphans}

    def writer_in_transaction(self) -> bool:
        import apsw

        conn = self._connect(KB)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except apsw.BusyError:
            return True
        finally:
            conn.close()

    def close(self) -> None:
        for store in self.stores:
            store.close()


class PostgresBackend:
    kind = "postgres"
    _numbers = itertools.count()

    def __init__(self, server: Postgres) -> None:
        import psycopg

        self.server = server
        self.database = f"test_{os.getpid()}_{next(self._numbers)}"
        self.admin = psycopg.connect(server.url(), autocommit=True)
        self.admin.execute(f"CREATE DATABASE {self.database}")
        self.location = server.url(self.database)
        self.conn = psycopg.connect(self.location, autocommit=True)
        self.stores: list[Store] = []

    def new_store(self) -> Store:
        from luodi.kb.store.postgres import PostgresStore

        self.stores.append(PostgresStore(self.location))
        return self.stores[-1]

    def audit(self, name: str) -> dict[str, Any]:
        documents = {row[0]: tuple(row[1:]) for row in self.conn.execute(
            "SELECT d.source, d.chunks, count(c.id), count(c.tsv), count(c.embedding) "
            "FROM luodi_kb.documents d JOIN luodi_kb.knowledge_bases kb ON kb.id = d.kb_id "
            "LEFT JOIN luodi_kb.chunks c ON c.doc_id = d.id WHERE kb.name = %s GROUP BY d.id",
            (name,))}
        [(orphans,)] = self.conn.execute(
            "SELECT count(*) FROM luodi_kb.chunks c LEFT JOIN luodi_kb.documents d ON d.id = c.doc_id "
            "WHERE d.id IS NULL OR d.kb_id <> c.kb_id").fetchall()
        return {"documents": documents, "orphans": orphans}

    def writer_in_transaction(self) -> bool:
        [(count,)] = self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()").fetchall()
        return count > 0

    def close(self) -> None:
        for store in self.stores:
            store.close()
        self.conn.close()
        self.admin.execute(f"DROP DATABASE {self.database} WITH (FORCE)")
        self.admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made: Backend
    if request.param == "sqlite":
        made = SqliteBackend(tmp_path / "kb")
    else:
        made = PostgresBackend(request.getfixturevalue("postgres"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    """A fresh, empty store of each kind."""
    return backend.new_store()
