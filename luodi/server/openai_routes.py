"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Owns the request handler of each route — small: validate, build prompt ids and `SamplingParams`,
admit, then either stream server-sent events or collect one JSON answer — and the shape of each
answer (chunks, usage, logprobs, finish_reason) as OpenAI's API reference gives it.

A client that goes away mid-answer has its request aborted at once: sse-starlette cancels a
stream when the connection closes; a non-streamed request watches for the disconnect itself.
Either way the engine frees the request's KV blocks.

Work that grows with the input — tokenizing, rendering the chat template — runs in a worker
thread, so one multi-megabyte prompt does not stall `/health` and every other stream. Each
caller's prompts share cached prefix blocks only with the same caller's (`_cache_salt`), so
`cached_tokens` and the time to first token reveal nothing of another tenant's prompts.

Must not know how the engine schedules or a model computes: it calls `ModelService` and `LLM`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from luodi.engine.engine import RequestOutput
from luodi.engine.sampling import SamplingParams, TokenLogprobs
from luodi.llm import LLM
from luodi.server import protocol as p
from luodi.errors import InvalidParameterError
from luodi.kb.answer import cited_numbers
from luodi.kb.embedding import embedder_names
from luodi.server.errors import ClientClosedRequest, ModelNotServedError, error_payload
from luodi.server.kb_routes import request_owner
from luodi.server.service import Admission, ModelService

router = APIRouter(responses=p.ERROR_RESPONSES)


def _service(request: Request) -> ModelService:
    return request.app.state.service


def _tenant(request: Request) -> str | None:
    """Who is calling: the key's id (random, never reused, so a key re-added under an old name is
    another tenant), as the auth middleware put it on the request; None on a server without keys."""
    return getattr(request.state, "api_key_id", None)


def _cache_salt(request: Request, requested: str | None) -> str | None:
    """The caller's prefix-cache partition: its tenant's, narrowed by the request's own `cache_salt`.
    Every caller of a server without keys shares one partition (None, unless a salt is sent)."""
    tenant = _tenant(request)
    if tenant is None and requested is None:
        return None
    return json.dumps([tenant, requested])


@dataclass(slots=True)
class _Answer:
    """One request's identity and everything the response needs besides the outputs themselves."""

    llm: LLM
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    id: str
    created: int = field(default_factory=p.now)
    sources: list[dict[str, Any]] | None = None  # a knowledge-base answer's [n] → passage

    def token_text(self, token_id: int) -> str:
        return self.llm.tokenizer.decode([token_id], skip_special_tokens=False)

    def usage(self, final: RequestOutput | None) -> dict[str, Any]:
        completion = final.num_output_tokens if final else 0
        cached = final.num_cached_tokens if final else 0
        return {
            "prompt_tokens": len(self.prompt_ids),
            "completion_tokens": completion,
            "total_tokens": len(self.prompt_ids) + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def chat_logprobs(self, logprobs: tuple[TokenLogprobs, ...]) -> dict[str, Any] | None:
        if self.params.logprobs is None:
            return None
        content = []
        for lp in logprobs:
            token = self.token_text(lp.token_id)
            top = [self._top_entry(token_id, value) for token_id, value in lp.top]
            content.append(
                {"token": token, "logprob": lp.logprob, "bytes": list(token.encode()), "top_logprobs": top}
            )
        return {"content": content}

    def _top_entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        token = self.token_text(token_id)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    def completion_logprobs(self, logprobs: tuple[TokenLogprobs, ...], offset: int) -> dict[str, Any] | None:
        """The legacy completions format; `offset` is where this piece's text starts in the answer."""
        if self.params.logprobs is None:
            return None
        tokens = [self.token_text(lp.token_id) for lp in logprobs]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        top = [{self.token_text(t): v for t, v in lp.top} for lp in logprobs]
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": top,
            "text_offset": offsets,
        }


# -- models -------------------------------------------------------------------------------------------


@router.get("/v1/models", response_model=p.ModelList)
async def list_models(request: Request) -> p.ModelList:
    service = _service(request)
    llm = service.ready_llm()
    return p.ModelList(data=[p.ModelCard(id=model_id, max_model_len=llm.context_window)
                             for model_id in service.model_ids()])


@router.get("/v1/models/{model_id:path}", response_model=p.ModelCard)
async def retrieve_model(model_id: str, request: Request) -> p.ModelCard:
    llm = _service(request).ready_llm(model_id)
    return p.ModelCard(id=model_id, max_model_len=llm.context_window)


# -- chat completions ----------------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=p.ChatCompletion)
async def create_chat_completion(body: p.ChatCompletionRequest, request: Request) -> Any:
    service = _service(request)
    llm = service.ready_llm(body.model)
    body.check_limits(service.config.request_limits, llm.vocab_size)
    params = body.to_sampling_params()
    sources = None
    if body.kb:
        knowledge = request.app.state.knowledge
        grounded = await knowledge.run(knowledge.grounded_prompt, llm, body.kb, request_owner(request),
                                       body.chat_messages(), body.kb_k, params.max_tokens or 256)
        prompt_ids, sources = grounded.prompt_ids, grounded.sources
    else:
        prompt_ids = await run_in_threadpool(llm.prompt_ids, body.chat_messages())
    adapter = service.adapter_for(body.model)
    await run_in_threadpool(service.check_prompt, prompt_ids, params, prompt_param="messages", adapter=adapter)
    answer = _Answer(llm, body.model, prompt_ids, params, p.new_id("chatcmpl"), sources=sources)
    admission = service.admit()
    outputs = service.generate(admission, prompt_ids, params, adapter, _cache_salt(request, body.cache_salt))
    if body.stream:
        return _event_stream(_chat_events(answer, outputs, body.include_usage), admission)
    return _chat_completion(answer, await _collect(request, outputs, admission))


def _chat_completion(answer: _Answer, outputs: list[RequestOutput]) -> p.ChatCompletion:
    final = outputs[-1] if outputs else None
    logprobs = answer.chat_logprobs(tuple(lp for out in outputs for lp in out.new_logprobs))
    choice = p.ChatChoice(
        message=p.ChatResponseMessage(content="".join(o.new_text for o in outputs)),
        logprobs=p.ChatLogprobs(**logprobs) if logprobs else None,
        finish_reason=final.finish_reason if final else None,
    )
    return p.ChatCompletion(
        id=answer.id,
        created=answer.created,
        model=answer.model,
        choices=[choice],
        usage=p.Usage(**answer.usage(final)),
        sources=_cited(answer.sources, choice.message.content),
    )


def _cited(sources: list[dict[str, Any]] | None, text: str) -> list[dict[str, Any]] | None:
    if sources is None:
        return None
    cited = cited_numbers(text)
    return [{**source, "cited": source["n"] in cited} for source in sources]


async def _chat_events(
    answer: _Answer, outputs: AsyncGenerator[RequestOutput, None], include_usage: bool
) -> AsyncIterator[str]:
    base = {
        "id": answer.id,
        "object": "chat.completion.chunk",
        "created": answer.created,
        "model": answer.model,
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return _dumps({**base, "choices": [choice], **extra})

    first = {"role": "assistant", "content": ""}
    if answer.sources is not None:  # a knowledge-base answer: the passages it may cite, up front
        yield _dumps({**base, "choices": [{"index": 0, "delta": first, "logprobs": None, "finish_reason": None}],
                      "sources": answer.sources, **extra})
    else:
        yield chunk(first)
    final = None
    try:
        async with aclosing(outputs):
            async for out in outputs:
                final = out
                logprobs = answer.chat_logprobs(out.new_logprobs)
                if out.new_text or logprobs:
                    yield chunk({"content": out.new_text}, logprobs=logprobs)
    except Exception as exc:  # noqa: BLE001
        # The engine failed mid-stream: the 200 status is already sent, so the error goes in the stream.
        yield _error_event(exc)
        return
    yield chunk({}, finish_reason=final.finish_reason if final else None)
    if include_usage:
        yield _dumps({**base, "choices": [], "usage": answer.usage(final)})
    yield "[DONE]"


# -- completions --------------------------------------------------------------------------------------


@router.post("/v1/completions", response_model=p.Completion)
async def create_completion(body: p.CompletionRequest, request: Request) -> Any:
    service = _service(request)
    llm = service.ready_llm(body.model)
    body.check_limits(service.config.request_limits, llm.vocab_size)
    params = body.to_sampling_params()
    prompt = body.single_prompt()
    # Text is text (special tokens spelled in it too, as OpenAI's API does); control tokens come as ids.
    prompt_ids = await run_in_threadpool(llm.prompt_ids, prompt, raw=True) if isinstance(prompt, str) else list(prompt)
    adapter = service.adapter_for(body.model)
    await run_in_threadpool(service.check_prompt, prompt_ids, params, prompt_param="prompt", adapter=adapter)
    answer = _Answer(llm, body.model, prompt_ids, params, p.new_id("cmpl"))
    admission = service.admit()
    outputs = service.generate(admission, prompt_ids, params, adapter, _cache_salt(request, body.cache_salt))
    if body.stream:
        return _event_stream(_completion_events(answer, outputs, body.include_usage), admission)
    return _completion(answer, await _collect(request, outputs, admission))


def _completion(answer: _Answer, outputs: list[RequestOutput]) -> p.Completion:
    final = outputs[-1] if outputs else None
    logprobs = answer.completion_logprobs(tuple(lp for out in outputs for lp in out.new_logprobs), 0)
    choice = p.CompletionChoice(
        text="".join(o.new_text for o in outputs),
        logprobs=p.CompletionLogprobs(**logprobs) if logprobs else None,
        finish_reason=final.finish_reason if final else None,
    )
    return p.Completion(
        id=answer.id,
        created=answer.created,
        model=answer.model,
        choices=[choice],
        usage=p.Usage(**answer.usage(final)),
    )


async def _completion_events(
    answer: _Answer, outputs: AsyncGenerator[RequestOutput, None], include_usage: bool
) -> AsyncIterator[str]:
    base = {"id": answer.id, "object": "text_completion", "created": answer.created, "model": answer.model}
    extra = {"usage": None} if include_usage else {}
    final = None
    offset = 0
    try:
        async with aclosing(outputs):
            async for out in outputs:
                final = out
                logprobs = answer.completion_logprobs(out.new_logprobs, offset)
                offset += len(out.new_text)
                if out.new_text or logprobs or out.finished:
                    choice = {
                        "index": 0,
                        "text": out.new_text,
                        "logprobs": logprobs,
                        "finish_reason": out.finish_reason if out.finished else None,
                    }
                    yield _dumps({**base, "choices": [choice], **extra})
    except Exception as exc:  # noqa: BLE001 -- the engine failed mid-stream
        yield _error_event(exc)
        return
    if include_usage:
        yield _dumps({**base, "choices": [], "usage": answer.usage(final)})
    yield "[DONE]"


# -- embeddings ---------------------------------------------------------------------------------------


@router.post("/v1/embeddings")
async def create_embeddings(body: p.EmbeddingRequest, request: Request) -> Any:
    """Vectors from the knowledge base's embedders (`model`: one of their names)."""
    if body.model not in embedder_names():
        raise ModelNotServedError(
            f"{body.model!r} is not an embedding model here; use one of: {', '.join(embedder_names())}", param="model")
    texts = body.texts()
    if body.dimensions is not None:
        raise InvalidParameterError("dimensions is not supported: the embedders' width is fixed", param="dimensions")
    knowledge = request.app.state.knowledge
    embedder = await knowledge.run(knowledge.embedder, body.model)
    vectors = await knowledge.run(embedder.embed_passages, texts)
    tokens = await knowledge.run(lambda: sum(embedder.count_tokens(text) for text in texts))
    data = [{"object": "embedding", "index": i, "embedding": _encode(row, body.encoding_format)}
            for i, row in enumerate(vectors)]
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode(vector: Any, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


# -- helpers ------------------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _error_event(exc: Exception) -> str:
    _, body, _ = error_payload(exc)
    return _dumps(body)


def _event_stream(events: AsyncIterator[str], admission: Admission) -> EventSourceResponse:
    # The background release covers a stream cancelled before its generator ever started.
    return EventSourceResponse(
        events,
        sep="\n",
        background=BackgroundTask(admission.release),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _collect(
    request: Request, outputs: AsyncGenerator[RequestOutput, None], admission: Admission
) -> list[RequestOutput]:
    """Every output of a non-streamed request — or, if the client leaves first, abort it."""

    async def drain() -> list[RequestOutput]:
        async with aclosing(outputs):
            return [out async for out in outputs]

    work = asyncio.ensure_future(drain())
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()  # raises CancelledError inside the engine stream, which aborts the request
            with suppress(asyncio.CancelledError):
                await work
        admission.release()  # already released unless the stream never started
    if work.cancelled():
        raise ClientClosedRequest("the client closed the connection before the answer was ready")
    return work.result()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
