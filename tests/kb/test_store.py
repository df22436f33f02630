"""One suite for every Store (SQLite and PostgreSQL, via the `store`/`backend` fixtures).

Oracles: hand-made chunks whose best text match is known by construction, unit vectors whose
cosine similarities numpy computes, and, for crashes, the tables themselves (`backend.audit`).
"""

from __future__ import annotations

import os
import select
import shutil
import stat
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from luodi.errors import (
    InvalidParameterError,
    KnowledgeBaseError,
    KnowledgeBaseExistsError,
    KnowledgeBaseNotFoundError,
)
from luodi.kb.document import Chunk
from luodi.kb.store import open_store
from luodi.kb.store.base import LOCAL_OWNER, Store

DIM = 4
A, B = "alice", "bob"


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def chunks_of(*texts: str) -> list[Chunk]:
    return [Chunk(text=t, page=i + 1, section=f"s{i}", ordinal=i) for i, t in enumerate(texts)]


def basis(n: int, offset: int = 0) -> np.ndarray:
    """n distinct one-hot rows of width DIM (n + offset <= DIM)."""
    return np.eye(DIM, dtype=np.float32)[offset:offset + n]


def new_kb(store: Store, name: str = "docs", owner: str = A) -> str:
    store.create(name, owner=owner, embedder="test-embedder", dim=DIM)
    return name


# -- knowledge bases ---------------------------------------------------------------------

def test_create_list_info_drop(store: Store) -> None:
    info = store.create("notes", owner=A, embedder="test-embedder", dim=DIM)
    assert (info.name, info.owner, info.embedder, info.dim, info.documents, info.chunks) == (
        "notes", A, "test-embedder", DIM, 0, 0)
    store.create("手册", owner=A, embedder="other", dim=8)
    assert [kb.name for kb in store.list(owner=A)] == sorted(["notes", "手册"])
    assert store.info("手册", owner=A).dim == 8
    store.drop("notes", owner=A)
    assert [kb.name for kb in store.list(owner=A)] == ["手册"]
    with pytest.raises(KnowledgeBaseError, match="unknown knowledge base"):
        store.info("notes", owner=A)
    store.create("notes", owner=A, embedder="test-embedder", dim=DIM)  # the name is free again
    assert store.info("notes", owner=A).documents == 0


def test_create_rejects_a_name_the_same_owner_has(store: Store) -> None:
    new_kb(store)
    with pytest.raises(KnowledgeBaseExistsError, match='"docs" already exists'):
        store.create("docs", owner=A, embedder="test-embedder", dim=DIM)


def test_names_are_scoped_per_owner(store: Store) -> None:
    """Two owners may both have "handbook"; each sees, searches and drops only its own."""
    store.create("handbook", owner=A, embedder="test-embedder", dim=DIM)
    store.replace_document("handbook", "a.txt", "ha", chunks_of("alice walrus"), basis(1), owner=A)
    info = store.create("handbook", owner=B, embedder="other", dim=8)  # the name only A has
    assert (info.owner, info.dim, info.documents) == (B, 8, 0)
    store.replace_document("handbook", "b.txt", "hb", chunks_of("bob heron"), np.eye(8, dtype=np.float32)[:1],
                           owner=B)
    with pytest.raises(KnowledgeBaseExistsError):
        store.create("handbook", owner=B, embedder="other", dim=8)
    assert [(kb.name, kb.owner, kb.dim) for kb in store.list(owner=A)] == [("handbook", A, DIM)]
    assert [(kb.name, kb.owner, kb.dim) for kb in store.list(owner=B)] == [("handbook", B, 8)]
    assert [d.source for d in store.documents("handbook", owner=A)] == ["a.txt"]
    assert [h.text for h in store.search_text("handbook", "walrus heron", 5, owner=A)] == ["alice walrus"]
    assert [h.text for h in store.search_text("handbook", "walrus heron", 5, owner=B)] == ["bob heron"]
    store.drop("handbook", owner=B)
    assert store.list(owner=B) == []
    assert store.info("handbook", owner=A).documents == 1
    with pytest.raises(KnowledgeBaseNotFoundError):
        store.info("handbook", owner=B)


@pytest.mark.parametrize("text", ["\ud800", "ok \udcff", "\udfff.md"])
def test_text_that_is_not_unicode_is_refused(store: Store, text: str) -> None:
    """A lone surrogate (JSON "\\ud800", a non-UTF-8 argv or file name) is a parameter error,
    never an encoder crash, for every text the store is given."""
    kb = new_kb(store)
    store.replace_document(kb, "a.txt", "h", chunks_of("walrus"), basis(1), owner=A)
    attempts = [
        ("query", lambda: store.search_text(kb, text, 3, owner=A)),
        ("source", lambda: store.document_hash(kb, text, owner=A)),
        ("source", lambda: store.replace_document(kb, text, "h", chunks_of("x"), basis(1), owner=A)),
        ("source", lambda: store.delete_document(kb, text, owner=A)),
    ]
    for param, attempt in attempts:
        with pytest.raises(InvalidParameterError, match="not valid Unicode") as err:
            attempt()
        assert err.value.param == param
    with pytest.raises(KnowledgeBaseError, match="invalid knowledge base name"):
        store.create(text, owner=A, embedder="test-embedder", dim=DIM)
    assert [d.source for d in store.documents(kb, owner=A)] == ["a.txt"]


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "a.b", "_x", "x" * 65, "a b"])
def test_bad_names_are_rejected(store: Store, name: str) -> None:
    with pytest.raises(KnowledgeBaseError, match="invalid knowledge base name"):
        store.create(name, owner=A, embedder="test-embedder", dim=DIM)
    with pytest.raises(KnowledgeBaseError, match="invalid knowledge base name"):
        store.info(name, owner=A)


def test_unknown_kb_says_how_to_create_it(store: Store) -> None:
    with pytest.raises(KnowledgeBaseNotFoundError) as err:
        store.search_text("missing", "anything", 3, owner=A)
    assert str(err.value) == ('unknown knowledge base "missing": '
                              'create it first with `luodi kb create missing`')


# -- documents ---------------------------------------------------------------------------

def test_add_document_and_hash(store: Store) -> None:
    kb = new_kb(store)
    assert store.document_hash(kb, "a.txt", owner=A) is None
    store.replace_document(kb, "a.txt", "hash-a", chunks_of("one", "two"), basis(2), owner=A)
    assert store.document_hash(kb, "a.txt", owner=A) == "hash-a"
    [doc] = store.documents(kb, owner=A)
    assert (doc.source, doc.content_hash, doc.chunks) == ("a.txt", "hash-a", 2)
    assert doc.added_at > 0
    info = store.info(kb, owner=A)
    assert (info.documents, info.chunks) == (1, 2)
    [hit] = store.search_vector(kb, basis(1, 1)[0], 1, owner=A)
    assert (hit.text, hit.source, hit.page, hit.section) == ("two", "a.txt", 2, "s1")


def test_replace_removes_old_chunks_from_both_indexes(backend, store: Store) -> None:
    kb = new_kb(store)
    store.replace_document(kb, "a.txt", "v1", chunks_of("old walrus text", "old heron text", "x"),
                           basis(3), owner=A)
    store.replace_document(kb, "b.txt", "b1", chunks_of("unrelated"), basis(1, 3), owner=A)
    store.replace_document(kb, "a.txt", "v2", chunks_of("new pelican text"), basis(1, 2), owner=A)

    assert store.document_hash(kb, "a.txt", owner=A) == "v2"
    info = store.info(kb, owner=A)
    assert (info.documents, info.chunks) == (2, 2)
    assert store.search_text(kb, "walrus heron", 10, owner=A) == []
    assert [h.text for h in store.search_text(kb, "pelican", 10, owner=A)] == ["new pelican text"]
    hits = store.search_vector(kb, basis(1)[0], 10, owner=A)  # the old chunk 0 was exactly here
    assert sorted(h.text for h in hits) == ["new pelican text", "unrelated"]
    assert backend.audit(kb) == {"documents": {"a.txt": (1, 1, 1, 1), "b.txt": (1, 1, 1, 1)},
                                 "orphans": 0}


def test_delete_document(backend, store: Store) -> None:
    kb = new_kb(store)
    store.replace_document(kb, "a.txt", "ha", chunks_of("alpha walrus"), basis(1), owner=A)
    store.replace_document(kb, "b.txt", "hb", chunks_of("beta heron", "gamma"), basis(2, 1), owner=A)
    assert store.delete_document(kb, "a.txt", owner=A) is True
    assert store.delete_document(kb, "a.txt", owner=A) is False
    assert store.document_hash(kb, "a.txt", owner=A) is None
    assert [d.source for d in store.documents(kb, owner=A)] == ["b.txt"]
    assert store.search_text(kb, "walrus", 5, owner=A) == []
    assert {h.source for h in store.search_vector(kb, basis(1)[0], 5, owner=A)} == {"b.txt"}
    assert backend.audit(kb) == {"documents": {"b.txt": (2, 2, 2, 2)}, "orphans": 0}


def test_vectors_of_the_wrong_width_are_refused(store: Store) -> None:
    kb = new_kb(store)
    with pytest.raises(KnowledgeBaseError, match="vectors are 3-dimensional .* 4-dimensional"):
        store.replace_document(kb, "a.txt", "h", chunks_of("x"), np.ones((1, 3), np.float32), owner=A)
    with pytest.raises(KnowledgeBaseError, match="vectors are 5-dimensional"):
        store.search_vector(kb, np.ones(5, np.float32), 3, owner=A)
    assert store.documents(kb, owner=A) == []


# -- search ------------------------------------------------------------------------------

TEXTS = [
    "apple pie and apple juice",
    "apple orchards in autumn",
    "a zebra grazing on the plain",
    "red apple, green apple",
    "知识库支持全文检索和向量检索",
    "今天天气很好，我们去公园散步",
    "軟體開發需要測試",  # stored traditional: found by simplified queries too
]


@pytest.fixture
def searchable(store: Store) -> str:
    kb = new_kb(store)
    chunks = chunks_of(*TEXTS)
    store.replace_document(kb, "mixed.md", "h", chunks, np.tile(basis(1), (len(chunks), 1)), owner=A)
    return kb


@pytest.mark.parametrize(("query", "best"), [
    ("apple zebra", 2),  # the rare word outranks the common one
    ("ZEBRA!", 2),
    ('zebra" OR * NEAR( :', 2),  # punctuation is text, not FTS syntax
    ("全文检索", 4),
    ("知識庫", 4),  # traditional query, simplified text
    ("软体开发", 6),  # simplified query, traditional text
])
def test_search_text_ranks_the_rare_term_first(store: Store, searchable: str, query: str,
                                               best: int) -> None:
    hits = store.search_text(searchable, query, 3, owner=A)
    assert hits[0].text == TEXTS[best]
    assert (hits[0].source, hits[0].page, hits[0].section) == ("mixed.md", best + 1, f"s{best}")
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_search_text_matches_any_word_and_respects_k(store: Store, searchable: str) -> None:
    hits = store.search_text(searchable, "apple", 10, owner=A)
    assert sorted(h.text for h in hits) == sorted(t for t in TEXTS if "apple" in t)
    assert len(store.search_text(searchable, "apple", 2, owner=A)) == 2
    assert store.search_text(searchable, "platypus", 5, owner=A) == []
    assert store.search_text(searchable, "?!。", 5, owner=A) == []


def test_search_vector_returns_exact_cosine_neighbours(store: Store) -> None:
    kb = new_kb(store)
    vectors = np.stack([unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(1, 1, 0, 0), unit(0, 0, 1, 1),
                        unit(-1, 0, 0, 0)])
    store.replace_document(kb, "v.txt", "h", chunks_of("e0", "e1", "e01", "e23", "-e0"), vectors,
                           owner=A)
    query = unit(0.9, 0.3, 0.1, 0)
    expected = vectors @ query
    order = np.argsort(-expected)
    hits = store.search_vector(kb, query, 3, owner=A)
    assert [h.text for h in hits] == [["e0", "e1", "e01", "e23", "-e0"][i] for i in order[:3]]
    np.testing.assert_allclose([h.score for h in hits], expected[order[:3]], rtol=1e-5, atol=1e-6)
    assert len(store.search_vector(kb, query, 10, owner=A)) == 5


# -- ownership ---------------------------------------------------------------------------

def test_other_owners_cannot_see_or_touch_a_kb(store: Store) -> None:
    kb = new_kb(store, owner=A)
    store.replace_document(kb, "a.txt", "h", chunks_of("secret walrus"), basis(1), owner=A)
    assert store.list(owner=B) == []
    with pytest.raises(KnowledgeBaseError) as missing:
        store.info("nonexistent", owner=B)
    expected = str(missing.value).replace("nonexistent", kb)
    attempts = [
        lambda: store.info(kb, owner=B),
        lambda: store.documents(kb, owner=B),
        lambda: store.document_hash(kb, "a.txt", owner=B),
        lambda: store.search_text(kb, "walrus", 3, owner=B),
        lambda: store.search_vector(kb, basis(1)[0], 3, owner=B),
        lambda: store.replace_document(kb, "b.txt", "h", chunks_of("x"), basis(1), owner=B),
        lambda: store.delete_document(kb, "a.txt", owner=B),
        lambda: store.drop(kb, owner=B),
    ]
    for attempt in attempts:
        with pytest.raises(KnowledgeBaseNotFoundError) as err:
            attempt()
        assert str(err.value) == expected
    info = store.info(kb, owner=A)
    assert (info.documents, info.chunks) == (1, 1)
    assert [h.text for h in store.search_text(kb, "walrus", 3, owner=A)] == ["secret walrus"]


# -- crashes -----------------------------------------------------------------------------

NUM_DOCS = 10

# A child process ingesting NUM_DOCS documents the way `luodi kb add` does: skip what is stored
# with the same hash, replace the rest. Document `stall_at` hangs after the store has read two of
# its chunks, i.e. inside replace_document's transaction, so the parent can kill it right there.
CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from test_store import document
from pathlib import Path
kind, location, version, stall_at = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if kind == "sqlite":
    from luodi.kb.store.sqlite import SqliteStore
    store = SqliteStore(Path(location))
else:
    from luodi.kb.store.postgres import PostgresStore
    store = PostgresStore(location)

class Stalling(list):
    def __iter__(self):
        for i, chunk in enumerate(list.__iter__(self)):
            if i == 2:
                print("stalled", flush=True)
                time.sleep(600)
            yield chunk

for i in range(int(sys.argv[6])):
    source, digest, chunks, vectors = document(i, version)
    if store.document_hash("kb", source, owner="alice") == digest:
        print("skipped", i, flush=True)
        continue
    store.replace_document("kb", source, digest, Stalling(chunks) if i == stall_at else chunks,
                           vectors, owner="alice")
    print("stored", i, flush=True)
print("done", flush=True)
"""


def document(i: int, version: int) -> tuple[str, str, list[Chunk], np.ndarray]:
    """Document i at `version`: 3 to 6 chunks, so versions differ in chunk count."""
    num_chunks = 3 + (i + version) % 4
    word = ["firstedition", "secondedition"][version - 1]
    chunks = [Chunk(f"document {i} {word} part {j}", None, None, j) for j in range(num_chunks)]
    vectors = np.random.default_rng(100 * version + i).normal(size=(num_chunks, 8))
    return f"doc{i}.txt", f"sha-{i}-v{version}", chunks, vectors / np.linalg.norm(vectors, axis=1,
                                                                                     keepdims=True)


def _child(backend, version: int, stall_at: int) -> subprocess.Popen:
    args = [sys.executable, "-c", CHILD, str(Path(__file__).parent), backend.kind, backend.location,
            str(version), str(stall_at), str(NUM_DOCS)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)


def _run_to_completion(backend, version: int) -> list[str]:
    proc = _child(backend, version, stall_at=-1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()


def _kill_when_stalled(backend, version: int, stall_at: int) -> list[str]:
    proc = _child(backend, version, stall_at)
    lines: list[str] = []
    try:
        while not lines or lines[-1] != "stalled":
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            line = proc.stdout.readline().decode().strip() if ready else ""
            if not line:
                proc.kill()
                raise AssertionError(f"child ended or hung before stalling: {lines} "
                                     f"{proc.communicate()[1].decode()}")
            lines.append(line)
        assert backend.writer_in_transaction()  # the kill lands inside replace_document
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return lines


def _assert_consistent(backend, store: Store, versions: dict[int, int]) -> None:
    """Exactly documents `versions` (index → version), each whole in every table."""
    audit = backend.audit("kb")
    assert audit["orphans"] == 0
    expected = {}
    for i, version in versions.items():
        source, _, chunks, _ = document(i, version)
        expected[source] = (len(chunks),) * 4
    assert audit["documents"] == expected
    assert {d.source: d.content_hash for d in store.documents("kb", owner=A)} == {
        document(i, v)[0]: document(i, v)[1] for i, v in versions.items()}


def test_kill_9_mid_ingest_leaves_whole_documents_and_a_rerun_resumes(backend, store: Store) -> None:
    store.create("kb", owner=A, embedder="test-embedder", dim=8)

    # Killed while adding document 5: 0-4 are whole, 5 is absent.
    lines = _kill_when_stalled(backend, version=1, stall_at=5)
    assert lines == [f"stored {i}" for i in range(5)] + ["stalled"]
    _assert_consistent(backend, store, {i: 1 for i in range(5)})

    # The rerun skips what is there and adds the rest, with no duplicates.
    lines = _run_to_completion(backend, version=1)
    assert lines == [f"skipped {i}" for i in range(5)] + [f"stored {i}" for i in range(5, 10)] + ["done"]
    _assert_consistent(backend, store, {i: 1 for i in range(NUM_DOCS)})

    # Killed while replacing document 3 with a new version: it keeps its old version whole.
    _kill_when_stalled(backend, version=2, stall_at=3)
    _assert_consistent(backend, store, {i: 2 if i < 3 else 1 for i in range(NUM_DOCS)})

    _run_to_completion(backend, version=2)
    _assert_consistent(backend, store, {i: 2 for i in range(NUM_DOCS)})
    assert store.search_text("kb", "firstedition", 5, owner=A) == []
    assert store.info("kb", owner=A).chunks == sum(len(document(i, 2)[2]) for i in range(NUM_DOCS))


def test_sqlite_keeps_one_file_per_kb_inside_its_root(tmp_path: Path) -> None:
    from luodi.kb.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "kb")
    new_kb(store, "notes", owner=LOCAL_OWNER)
    new_kb(store, "notes", owner=A)
    with pytest.raises(KnowledgeBaseError):
        store.create("../notes", owner=A, embedder="test-embedder", dim=DIM)
    files = {p.relative_to(tmp_path / "kb") for p in tmp_path.rglob("*") if p.is_file()}
    assert {p.name for p in files} <= {"notes.sqlite", "notes.sqlite-wal", "notes.sqlite-shm"}
    assert Path("notes.sqlite") in files and len({p.parent for p in files}) == 2
    store.drop("notes", owner=A)
    store.drop("notes", owner=LOCAL_OWNER)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    store.close()


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    """Knowledge bases hold private documents: every folder 0700 and every file, the -wal and
    -shm side files included, 0600."""
    from luodi.kb.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "kb")
    for owner in (LOCAL_OWNER, A):
        store.create("notes", owner=owner, embedder="test-embedder", dim=DIM)
        store.replace_document("notes", "a.txt", "h", chunks_of("walrus"), basis(1), owner=owner)
    modes = _modes(tmp_path / "kb")  # while the store is open: its -wal and -shm files exist
    assert sum(name.endswith(("-wal", "-shm")) for name in modes) == 4
    assert {name: mode for name, mode in modes.items() if mode != (0o700 if (tmp_path / name).is_dir()
                                                                   else 0o600)} == {}
    store.close()


def test_sqlite_files_written_before_owner_folders_keep_working(tmp_path: Path) -> None:
    """Files an older Luodi wrote all lie in the root, 0644 in a 0755 folder: the local owner's
    stay the CLI's, another owner's move to that owner's folder, and everything is made private."""
    from luodi.kb.store.sqlite import SqliteStore

    root = tmp_path / "kb"
    store = SqliteStore(root)
    new_kb(store, "handbook", owner=LOCAL_OWNER)
    store.replace_document("handbook", "cli.txt", "h", chunks_of("local walrus"), basis(1), owner=LOCAL_OWNER)
    new_kb(store, "notes", owner=A)
    store.replace_document("notes", "a.txt", "h", chunks_of("alice heron"), basis(1), owner=A)
    store.close()
    [alices] = root.rglob("notes.sqlite")
    alices.rename(root / "notes.sqlite")  # the old layout: one folder for every owner
    shutil.rmtree(root / "owners")
    for path in (root, *root.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)

    store = SqliteStore(root)
    assert [h.text for h in store.search_text("notes", "heron", 3, owner=A)] == ["alice heron"]
    assert [h.text for h in store.search_text("handbook", "walrus", 3, owner=LOCAL_OWNER)] == ["local walrus"]
    assert [kb.name for kb in store.list(owner=LOCAL_OWNER)] == ["handbook"]
    assert not (root / "notes.sqlite").exists()
    new_kb(store, "notes", owner=LOCAL_OWNER)  # the name is free for the CLI now
    assert store.info("notes", owner=A).documents == 1
    assert {mode for mode in _modes(root).values()} <= {0o700, 0o600}
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    store.close()


# The knowledge_bases table as Luodi made it before names were scoped per owner.
LEGACY_PG_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA luodi_kb;
CREATE TABLE luodi_kb.knowledge_bases (
    id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, owner text NOT NULL,
    embedder text NOT NULL, dim integer NOT NULL, created_at double precision NOT NULL);
INSERT INTO luodi_kb.knowledge_bases (name, owner, embedder, dim, created_at)
VALUES ('handbook', 'local', 'test-embedder', 4, 0), ('notes', 'alice', 'test-embedder', 4, 0);
"""


def test_postgres_written_before_owner_scoping_keeps_working(postgres) -> None:
    import psycopg

    from luodi.kb.store.postgres import PostgresStore

    database = f"legacy_{os.getpid()}"
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    try:
        with psycopg.connect(postgres.url(database), autocommit=True) as conn:
            conn.execute(LEGACY_PG_SCHEMA)
        for _ in range(2):  # the migration runs on every open and changes nothing the second time
            store = PostgresStore(postgres.url(database))
            assert [kb.name for kb in store.list(owner=LOCAL_OWNER)] == ["handbook"]
            assert [kb.name for kb in store.list(owner=A)] == ["notes"]
            store.close()
        store = PostgresStore(postgres.url(database))
        store.replace_document("notes", "a.txt", "h", chunks_of("alice heron"), basis(1), owner=A)
        new_kb(store, "notes", owner=B)  # the old global UNIQUE(name) would refuse this
        new_kb(store, "notes", owner=LOCAL_OWNER)
        with pytest.raises(KnowledgeBaseExistsError):
            new_kb(store, "handbook", owner=LOCAL_OWNER)
        assert [h.text for h in store.search_text("notes", "heron", 3, owner=A)] == ["alice heron"]
        assert store.info("notes", owner=B).documents == 0
        store.close()
    finally:
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {database} WITH (FORCE)")


# -- open_store --------------------------------------------------------------------------

def test_open_store_defaults_to_sqlite_under_luodi_home(luodi_home: Path) -> None:
    from luodi.kb.store.sqlite import SqliteStore

    store = open_store()
    assert isinstance(store, SqliteStore) and store.root == luodi_home / "kb"
    store.close()


def test_open_store_rejects_unknown_locations() -> None:
    with pytest.raises(KnowledgeBaseError, match="unsupported knowledge-base store 'mysql://x'"):
        open_store("mysql://x")


def test_open_store_postgres(postgres) -> None:
    from luodi.kb.store.postgres import PostgresStore

    store = open_store(postgres.url())
    assert isinstance(store, PostgresStore)
    store.close()
    with pytest.raises(KnowledgeBaseError, match="cannot connect to PostgreSQL"):
        open_store(f"postgresql://postgres@/postgres?host={postgres.socket_dir}/nowhere")
