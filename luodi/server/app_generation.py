"""How the app routes (minutes, support, persona) run their model requests: through the server's
async engine, each admitted like any other request (429 when the server is full), so they batch with
other clients' and share the caller's prefix-cache partition.

Owns the bridge for app code that runs in a worker thread and generates synchronously (`Generate`),
the text stream of one admitted request, and its server-sent events (`{"delta": text}` messages; an
engine failure after the 200 is sent becomes an `event: error` in the stream). Must not know any app.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from luodi.apps.generation import Generate
from luodi.engine.engine import RequestOutput
from luodi.engine.sampling import SamplingParams
from luodi.server.errors import ClientClosedRequest, error_payload
from luodi.server.service import Admission, ModelService


def threaded_generate(service: ModelService, loop: asyncio.AbstractEventLoop,
                      cache_salt: str | None = None) -> Generate:
    """A `Generate` for app code running in a worker thread: each batch runs on `loop`'s engine."""
    def generate(prompts: Sequence[list[int]], params: Sequence[SamplingParams]) -> list[str]:
        batch = generate_all(service, prompts, params, cache_salt)
        return asyncio.run_coroutine_threadsafe(batch, loop).result()

    return generate


async def generate_all(service: ModelService, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
                       cache_salt: str | None = None) -> list[str]:
    async def one(prompt_ids: list[int], sampling: SamplingParams) -> str:
        deltas = stream_text(service, service.admit(), prompt_ids, sampling, cache_salt)
        return "".join([delta async for delta in deltas])

    return list(await asyncio.gather(*(one(p, s) for p, s in zip(prompts, params, strict=True))))


async def stream_text(service: ModelService, admission: Admission, prompt_ids: list[int],
                      params: SamplingParams, cache_salt: str | None = None,
                      on_output: Callable[[RequestOutput], None] | None = None) -> AsyncGenerator[str, None]:
    """The text deltas of one admitted request; closing the iterator early aborts it. `on_output`
    sees every engine output (token counts, cached prompt tokens)."""
    async for out in service.generate(admission, prompt_ids, params, cache_salt=cache_salt):
        if on_output is not None:
            on_output(out)
        if out.new_text:
            yield out.new_text


async def join_text(deltas: AsyncGenerator[str, None], client_gone: Awaitable[None]) -> str:
    """All of `deltas` as one text — or, if `client_gone` completes first, the request aborted
    (its KV blocks freed at once) and ClientClosedRequest raised."""
    async def join() -> str:
        return "".join([delta async for delta in deltas])

    work = asyncio.ensure_future(join())
    gone = asyncio.ensure_future(client_gone)
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()  # CancelledError inside the engine stream aborts the request
            with suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        raise ClientClosedRequest("the client closed the connection before the answer was ready")
    return work.result()


@dataclass(slots=True)
class StreamedText:
    """What `delta_events` sent: the text so far, and whether the stream ended in an error event."""

    text: str = ""
    has_failed: bool = False


async def delta_events(deltas: AsyncGenerator[str, None], streamed: StreamedText) -> AsyncIterator[dict[str, str]]:
    """One `{"delta": text}` message per delta; an engine failure becomes `event: error` and ends it."""
    try:
        async with aclosing(deltas):
            async for delta in deltas:
                streamed.text += delta
                yield {"data": sse_json({"delta": delta})}
    except Exception as exc:  # noqa: BLE001 — the 200 is sent: the error goes in the stream
        streamed.has_failed = True
        yield {"event": "error", "data": sse_json(error_payload(exc)[1])}


def event_stream(events: AsyncIterator[dict[str, str]], admission: Admission | None) -> EventSourceResponse:
    """The SSE response. The admission is released when its stream ends; releasing it here too
    (idempotent) covers a stream that never started (its client gone first)."""
    return EventSourceResponse(events, sep="\n",
                               background=BackgroundTask(admission.release) if admission else None,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
