"""`AsyncLLMEngine`: one engine loop, many asyncio callers, each streaming its own request.

A background thread owns the step loop (torch releases the GIL, so the event loop stays
responsive while a step runs); callers `async for` over `generate(...)` and receive each
`RequestOutput` of their request as soon as its step ends. A caller that stops iterating — a
client that went away — aborts its request, which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from luodi.engine.engine import LLMEngine, RequestOutput
from luodi.engine.sampling import SamplingParams


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._lock = threading.Lock()  # guards the engine and the stream table
        self._has_work = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="luodi-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs; raises the engine's validation errors at once."""
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            request_id = self.engine.add_request(prompt_ids, params, request_id)
            self._streams[request_id] = stream
        self._has_work.set()
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
        with self._lock:
            self._streams.pop(request_id, None)
            self.engine.abort(request_id)

    def shutdown(self) -> None:
        self._stopped = True
        self._has_work.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopped:
            self._has_work.wait()
            with self._lock:
                if not self.engine.has_unfinished:
                    self._has_work.clear()
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as exc:  # a bug in a step: fail every waiting caller, not silently
                    self._fail_all(exc)
                    continue
                for out in outputs:
                    self._deliver(out)

    def _deliver(self, out: RequestOutput) -> None:
        stream = self._streams.get(out.request_id)
        if stream is None:
            return
        if out.finished:
            del self._streams[out.request_id]
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, out)

    def _fail_all(self, exc: Exception) -> None:
        for request_id, stream in list(self._streams.items()):
            self.engine.abort(request_id)
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, exc)
        self._streams.clear()
