"""`KnowledgeService`: the server's knowledge bases — store, embedders, ingestion of uploads,
search, and the grounded prompt for a chat answer with sources.

Every store and embedder call runs off the event loop, each in a thread of its own that ends with
the call. A long-lived thread that ran torch ops would keep an OpenMP pool, and a second pool beside
the engine thread's makes libgomp cut its spin-wait (more OpenMP threads than cores): measured, the
served model's decode fell from 124 to 64 tok/s for good after one MiniLM search. Knowledge bases
belong to an owner (the API key's name, or "local" when the server has no keys, the same owner as
the CLI).

Calls run side by side: the stores serialize their own connections (SQLite: one connection and
lock per knowledge-base file; a transaction only while a document is written), and the embedders
keep no state between calls. Only ingestion is queued, one document at a time per owner, so a
tenant's long upload delays its own next upload but never another tenant's ingestion, and no
one's search or `/v1/embeddings`. Each ingestion runs within the configured `IngestLimits` and is
cancelled when its client goes away or the server shuts down; the upload waits on disk in an
`UploadSpool` folder that is removed with it (or, after a crash, at the next start).

Must not know HTTP: routes turn requests into calls here and results into JSON.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from luodi.errors import DocumentError, InvalidParameterError, KnowledgeBaseNotFoundError
from luodi.kb.answer import answer_messages, fit_passages
from luodi.kb.document import Hit
from luodi.kb.embedding import DEFAULT_EMBEDDER, Embedder, get_embedder
from luodi.kb.ingest.limits import DEFAULT_LIMITS, IngestBudget, IngestCancelledError, IngestLimits
from luodi.kb.ingest.loaders import SUPPORTED_SUFFIXES
from luodi.kb.ingest.pipeline import Ingestor, SourceFile
from luodi.kb.retrieval import search
from luodi.kb.store.base import Store
from luodi.llm import LLM, Message
from luodi.paths import luodi_home
from luodi.server.uploads import UploadSpool

T = TypeVar("T")
# A file name as uploaded: letters (any script), digits, spaces and . _ - ( ); no separators.
_SAFE_NAME = re.compile(r"^[\w\-. ()\u3000-\u303f\uff00-\uffef]{1,200}$")


def upload_name(filename: str) -> str:
    """The uploaded file's name, refused unless it is a plain, supported file name."""
    if not _SAFE_NAME.match(filename) or filename.strip(". ") != filename.strip() or ".." in filename:
        raise InvalidParameterError(
            f"unsafe document name {filename!r}: use a plain file name (letters, digits, spaces, . _ - ( ))",
            param="filename")
    if Path(filename).suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InvalidParameterError(
            f"{filename!r}: unsupported document type; supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}",
            param="filename")
    return filename


@dataclass(frozen=True, slots=True)
class GroundedPrompt:
    messages: list[Message]
    prompt_ids: list[int]
    sources: list[dict[str, Any]]  # [n] → source, page, section, text, score


@dataclass(frozen=True, slots=True)
class IngestionStatus:
    """An ingestion in flight: whose, into which knowledge base, and how far it got."""

    owner: str
    kb: str
    source: str
    pages_read: int
    ocr_pages: int


class KnowledgeService:
    def __init__(self, open_store: Callable[[], Store], limits: IngestLimits = DEFAULT_LIMITS,
                 uploads: Path | None = None) -> None:
        self._open_store = open_store
        self._store: Store | None = None
        self._embedders: dict[str, Embedder] = {}
        self.limits = limits
        self.uploads = UploadSpool(uploads if uploads is not None else luodi_home() / "uploads")
        self._opening = threading.Lock()  # the store is opened once, on first use
        self._loading = threading.Lock()  # each embedder is loaded once, on first use
        self._lock = threading.Lock()  # guards the fields below; held only for bookkeeping
        self._calls = threading.Condition(self._lock)
        self._num_calls = 0
        self._closed = False
        self._owner_queues: dict[str, threading.Lock] = {}
        self._ingestions: dict[int, tuple[str, str, str, IngestBudget]] = {}

    def start(self) -> None:
        """At server start-up: remove the uploads a crashed server left behind."""
        self.uploads.remove_stale()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a short-lived thread of its own, beside any other call."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def call() -> None:
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # delivered to the awaiting route, which maps it to an error
                loop.call_soon_threadsafe(_settle, done, None, exc)
                return
            finally:
                self._end_call()
            loop.call_soon_threadsafe(_settle, done, result, None)

        self._begin_call()
        threading.Thread(target=call, name="luodi-kb", daemon=True).start()
        return await done

    async def upload(self, client_gone: Awaitable[None], name: str, owner: str, filename: str,
                     content: bytes) -> dict[str, Any]:
        """`add_document` in a thread, cancelled (IngestCancelledError) if `client_gone` completes first."""
        return await self.run_upload(client_gone, filename, self.add_document, name, owner, filename, content)

    async def run_upload(self, client_gone: Awaitable[None], filename: str,
                         fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args, cancel)` in a thread, where `cancel` is a `threading.Event` set (and
        IngestCancelledError raised here) if `client_gone` completes first: the work on an upload
        stops at its next page, OCR call or embedding batch once its client has left."""
        cancel = threading.Event()
        work = asyncio.ensure_future(self.run(fn, *args, cancel))
        gone = asyncio.ensure_future(client_gone)
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                cancel.set()  # the thread stops at its next page, OCR call or embedding batch
                work.cancel()
        if not work.done():  # cancelling: a Task reports cancelled() only once it has run again
            raise IngestCancelledError(f"{filename}: the client went away; the upload was not stored")
        return work.result()

    def in_progress(self) -> list[IngestionStatus]:
        """The ingestions running now."""
        with self._lock:
            running = list(self._ingestions.values())
        return [IngestionStatus(owner, kb, source, budget.pages_read, budget.ocr_pages)
                for owner, kb, source, budget in running]

    def close(self) -> None:
        """Cancel the ingestions in flight, wait for every call to end, then close the store."""
        with self._lock:
            self._closed = True
            for *_, budget in self._ingestions.values():
                budget.cancel()
            self._calls.wait_for(lambda: self._num_calls == 0)
        if self._store is not None:
            self._store.close()
        self.uploads.close()

    def _begin_call(self) -> None:
        with self._lock:
            self._num_calls += 1

    def _end_call(self) -> None:
        with self._lock:
            self._num_calls -= 1
            self._calls.notify_all()

    # Everything below runs in those threads, several at a time.

    @property
    def store(self) -> Store:
        with self._opening:
            if self._store is None:
                self._store = self._open_store()
            return self._store

    def embedder(self, name: str) -> Embedder:
        with self._loading:  # a first load holds up only other first loads
            if name not in self._embedders:
                self._embedders[name] = get_embedder(name)
            return self._embedders[name]

    def create(self, name: str, owner: str, embedder: str = DEFAULT_EMBEDDER) -> dict[str, Any]:
        model = self.embedder(embedder)
        return _info(self.store.create(name, owner=owner, embedder=model.name, dim=model.dim))

    def list(self, owner: str) -> list[dict[str, Any]]:
        return [_info(info) for info in self.store.list(owner=owner)]

    def describe(self, name: str, owner: str) -> dict[str, Any]:
        documents = [
            {"source": d.source, "chunks": d.chunks, "sha256": d.content_hash, "added_at": d.added_at}
            for d in self.store.documents(name, owner=owner)
        ]
        return {**_info(self.store.info(name, owner=owner)), "documents": documents}

    def drop(self, name: str, owner: str) -> None:
        self.store.drop(name, owner=owner)

    def add_document(self, name: str, owner: str, filename: str, content: bytes,
                     cancel: threading.Event | None = None) -> dict[str, Any]:
        """Ingest one uploaded document, after the owner's earlier uploads, within the limits;
        `cancel` set stops it (IngestCancelledError). Nothing is stored unless all of it is."""
        info = self.store.info(name, owner=owner)
        ingestor = Ingestor(self.store, self.embedder(info.embedder), name, owner, limits=self.limits)
        cancel = cancel if cancel is not None else threading.Event()
        with self._owner_turn(owner, cancel), self.uploads.holding(filename, content) as path:
            budget = IngestBudget(self.limits, cancel, name=filename)
            with self._tracked(owner, name, filename, budget), upload_errors(path, filename):
                status, chunks = ingestor.add_file(SourceFile(path, filename), budget)
        return {"source": filename, "status": status, "chunks": chunks}

    def read_upload(self, owner: str, filename: str, content: bytes, read: Callable[[Path, IngestBudget], T],
                    cancel: threading.Event | None = None) -> T:
        """`read(path, budget)` on the upload spooled to disk, within the ingestion limits, tracked and
        cancelled like an ingestion (for an app that reads a document without storing it)."""
        cancel = cancel if cancel is not None else threading.Event()
        with self.uploads.holding(filename, content) as path:
            budget = IngestBudget(self.limits, cancel, name=filename)
            with self._tracked(owner, "", filename, budget), upload_errors(path, filename):
                return read(path, budget)

    @contextmanager
    def _owner_turn(self, owner: str, cancel: threading.Event) -> Iterator[None]:
        """Wait for `owner`'s ingestion in flight, if any (giving up if `cancel` is set)."""
        with self._lock:
            queue = self._owner_queues.setdefault(owner, threading.Lock())
        while not queue.acquire(timeout=0.2):
            if cancel.is_set():
                raise IngestCancelledError("the upload was cancelled while it waited; nothing was stored")
        try:
            yield
        finally:
            queue.release()

    @contextmanager
    def _tracked(self, owner: str, name: str, source: str, budget: IngestBudget) -> Iterator[None]:
        with self._lock:
            if self._closed:
                budget.cancel()
            self._ingestions[id(budget)] = (owner, name, source, budget)
        try:
            yield
        finally:
            with self._lock:
                del self._ingestions[id(budget)]

    def delete_document(self, name: str, owner: str, source: str) -> None:
        if not self.store.delete_document(name, source, owner=owner):
            raise KnowledgeBaseNotFoundError(f"knowledge base {name!r} has no document {source!r}")

    def search(self, name: str, owner: str, query: str, k: int) -> list[Hit]:
        info = self.store.info(name, owner=owner)
        return search(self.store, self.embedder(info.embedder), name, query, owner=owner, k=k)

    def grounded_prompt(self, llm: LLM, name: str, owner: str, messages: list[Message], k: int,
                        max_tokens: int) -> GroundedPrompt:
        """The chat prompt for answering the last user turn from `name`'s passages, with sources."""
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if not question.strip():
            raise InvalidParameterError("a knowledge-base answer needs a user message with a question",
                                        param="messages")
        hits = self.search(name, owner, question, k)
        passages, prompt_ids = fit_passages(llm, question, hits, max_tokens)
        grounded = answer_messages(question, passages)
        sources = [{"n": n, **hit.as_json()} for n, hit in enumerate(passages, start=1)]
        return GroundedPrompt(grounded, prompt_ids, sources)


@contextmanager
def upload_errors(path: Path, filename: str) -> Iterator[None]:
    """Errors reading the spooled upload at `path`, told in terms of the client's `filename`."""
    try:
        yield
    except DocumentError as exc:  # the file's path is the spool's; the client knows the name
        raise type(exc)(str(exc).replace(str(path), filename)) from None
    except OSError as exc:
        raise DocumentError(f"{filename}: cannot read the stored upload ({exc.strerror}); "
                            "check the disk under the uploads folder and retry") from None


def _info(info) -> dict[str, Any]:
    return {"name": info.name, "embedder": info.embedder, "dim": info.dim,
            "documents": info.documents, "chunks": info.chunks}


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # the awaiting request was cancelled (its client left)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
