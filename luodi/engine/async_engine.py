"""`AsyncLLMEngine`: one engine loop, many asyncio callers, each streaming its own request.

A background thread owns the engine and runs the step loop (torch releases the GIL, so the
event loop stays responsive while a step runs); callers `async for` over `generate(...)` and
receive each `RequestOutput` of their request as soon as its step ends. A caller that stops
iterating — a client that went away — aborts its request, which frees its KV blocks before the
next step.

Callers never wait for a step: new requests and aborts go into an inbox that the engine thread
drains between steps. (Holding a lock around each step instead starves the event loop: the
engine thread releases and retakes it back to back, so an abort could wait for a whole answer.)
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from luodi.engine.engine import LLMEngine, RequestOutput
from luodi.engine.sampling import SamplingParams


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


@dataclass(frozen=True, slots=True)
class _Add:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stream: _Stream
    adapter: str | None
    cache_salt: str | None = None
    resume_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine  # touched only by the engine thread once started (checks aside)
        self._inbox: deque[_Add | _Abort] = deque()  # append/popleft are atomic across threads
        self._has_work = threading.Event()
        self._streams: dict[str, _Stream] = {}  # the engine thread's alone
        self._ids = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="luodi-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
                       adapter: str | None = None, cache_salt: str | None = None,
                       resume_ids: Sequence[int] = ()) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs (on a LoRA adapter, if named; sharing cached prefix blocks only
        with requests of the same `cache_salt`; continuing after `resume_ids`, see
        `LLMEngine.add_request`); raises validation errors at once."""
        self.engine.check_request(prompt_ids, params, adapter=adapter, resume_ids=resume_ids)  # reads only config
        request_id = request_id or f"async-{next(self._ids)}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._send(_Add(request_id, list(prompt_ids), params, stream, adapter, cache_salt, tuple(resume_ids)))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request; returns at once, and its blocks are free before the next step."""
        self._send(_Abort(request_id))

    def shutdown(self) -> None:
        self._stopped = True
        self._has_work.set()
        self._thread.join(timeout=10)

    def _send(self, message: _Add | _Abort) -> None:
        self._inbox.append(message)
        self._has_work.set()

    # -- the engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped:
            if not self.engine.has_unfinished:
                self._has_work.wait()
            # Clear before draining: a message sent after the clear sets the event again, so
            # the next wait cannot sleep through it.
            self._has_work.clear()
            self._drain_inbox()
            if not self.engine.has_unfinished:
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a bug in a step: fail every waiting caller, not silently
                self._fail_all(exc)
                continue
            for out in outputs:
                self._deliver(out)

    def _drain_inbox(self) -> None:
        while self._inbox:
            message = self._inbox.popleft()
            if isinstance(message, _Abort):
                self._streams.pop(message.request_id, None)
                self.engine.abort(message.request_id)
                continue
            try:
                self.engine.add_request(message.prompt_ids, message.params, message.request_id, message.adapter,
                                        message.cache_salt, message.resume_ids)
            except Exception as exc:  # checked by the caller already; deliver, never drop
                self._put(message.stream, exc)
                continue
            self._streams[message.request_id] = message.stream

    def _deliver(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return
        if out.finished:
            del self._streams[out.request_id]
        self._put(stream, out)

    def _fail_all(self, exc: Exception) -> None:
        for request_id, stream in self._streams.items():
            self.engine.abort(request_id)
            self._put(stream, exc)
        self._streams.clear()

    @staticmethod
    def _put(stream: _Stream, item: RequestOutput | BaseException) -> None:
        try:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop has closed: nobody is left to tell
            pass
