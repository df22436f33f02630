"""`KnowledgeService`: the server's knowledge bases — store, embedders, ingestion of uploads,
search, and the grounded prompt for a chat answer with sources.

Every store and embedder call runs off the event loop, one at a time (the store is never used from
two threads at once), each in a thread of its own that ends with the call. A long-lived thread that
ran torch ops would keep an OpenMP pool, and a second pool beside the engine thread's makes libgomp
cut its spin-wait (more OpenMP threads than cores): measured, the served model's decode fell from
124 to 64 tok/s for good after one MiniLM search. Knowledge bases belong to an
owner (the API key's name, or "local" when the server has no keys, the same owner as the CLI).

Must not know HTTP: routes turn requests into calls here and results into JSON.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from luodi.errors import DocumentError, InvalidParameterError, KnowledgeBaseNotFoundError
from luodi.kb.answer import answer_messages, fit_passages
from luodi.kb.document import Hit
from luodi.kb.embedding import DEFAULT_EMBEDDER, Embedder, get_embedder
from luodi.kb.ingest.loaders import SUPPORTED_SUFFIXES
from luodi.kb.ingest.pipeline import Ingestor, SourceFile
from luodi.kb.retrieval import search
from luodi.kb.store.base import Store
from luodi.llm import LLM, Message

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


class KnowledgeService:
    def __init__(self, open_store: Callable[[], Store]) -> None:
        self._open_store = open_store
        self._store: Store | None = None
        self._embedders: dict[str, Embedder] = {}
        self._one_at_a_time = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a short-lived thread, after any call still running."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def call() -> None:
            with self._one_at_a_time:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # delivered to the awaiting route, which maps it to an error
                    loop.call_soon_threadsafe(_settle, done, None, exc)
                    return
            loop.call_soon_threadsafe(_settle, done, result, None)

        threading.Thread(target=call, name="luodi-kb", daemon=True).start()
        return await done

    def close(self) -> None:
        with self._one_at_a_time:  # after the call in flight, if any
            if self._store is not None:
                self._store.close()

    # Everything below runs in those threads, one call at a time.

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def embedder(self, name: str) -> Embedder:
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

    def add_document(self, name: str, owner: str, filename: str, content: bytes) -> dict[str, Any]:
        info = self.store.info(name, owner=owner)
        ingestor = Ingestor(self.store, self.embedder(info.embedder), name, owner)
        with tempfile.TemporaryDirectory(prefix="luodi-upload-") as tmp:
            path = Path(tmp) / filename
            path.write_bytes(content)
            report = ingestor.add([SourceFile(path, filename)])
        if report.failed:
            raise DocumentError(report.failed[0][1].replace(str(path), filename))
        status = "added" if report.added else "replaced" if report.replaced else "unchanged"
        return {"source": filename, "status": status, "chunks": report.chunks}

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
