"""`POST /v1/apps/support`: the support bot over one of the caller's knowledge bases — an answer
with its sources, or a hand-off to a person when nothing retrieved is close enough.

The conversation comes as `messages`; the last is the customer's question, and earlier user turns
let `luodi.apps.support` rewrite a follow-up before retrieval. Knowledge bases are the caller's own,
resolved exactly as the /v1/kb routes do (another key's name is a 404). Retrieval and the prompt are
made in a knowledge-service thread; the answer is generated through the server's async engine.

With `"stream": true` the answer is server-sent events: `{"delta": text}` messages, then one
`event: sources` (the cited passages, a JSON list); a hand-off sends no text, but `event: sources`
(empty) and then `event: handoff` with `{reason, question, answer}` — the last event of the stream.

Must not know how the bot decides: it calls `SupportBot.prepare` and `SupportBot.finish`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from luodi.apps.support import SupportBot, SupportConfig, SupportTurn, default_params
from luodi.errors import InvalidParameterError
from luodi.kb.store import check_text
from luodi.llm import LLM, Message
from luodi.server.app_generation import StreamedText, delta_events, event_stream, join_text, sse_json, stream_text
from luodi.server.kb_routes import client_gone, request_owner
from luodi.server.kb_service import KnowledgeService
from luodi.server.openai_routes import cache_salt
from luodi.server.responses import ERROR_RESPONSES
from luodi.server.service import ModelService

router = APIRouter(prefix="/v1/apps", tags=["apps"], responses=ERROR_RESPONSES)
_DEFAULTS = SupportConfig()


class SupportMessage(BaseModel):
    role: Literal["system", "user", "assistant"] = Field(
        description="System messages are ignored: `persona` and `tone` set the bot's instructions.")
    content: str = Field(max_length=8000)


class SupportRequest(BaseModel):
    kb: str = Field(min_length=1, max_length=64, description="One of the caller's knowledge bases.")
    messages: list[SupportMessage] = Field(
        min_length=1, max_length=200, description="The conversation; the last is the customer's question.")
    persona: str = Field(_DEFAULTS.persona, max_length=2000, description="Who the bot is.")
    tone: str = Field(_DEFAULTS.tone, max_length=200, description="How it speaks.")
    min_score: float | None = Field(
        None, ge=-1.0, le=1.0, description="Hand off when no passage is at least this similar (cosine); "
                                           "default: the threshold tuned for the question's language.")
    max_tokens: int = Field(200, ge=1, le=4096)
    stream: bool = False
    model: str | None = None

    def question(self) -> str:
        last = self.messages[-1]
        if last.role != "user" or not last.content.strip():
            raise InvalidParameterError(
                "the last message must be the customer's question: role 'user' with non-empty content",
                param="messages")
        return check_text(last.content.strip(), "question", "messages")

    def history(self) -> list[Message]:
        return [{"role": m.role, "content": m.content} for m in self.messages[:-1]]

    def config(self) -> SupportConfig:
        return SupportConfig(self.persona, self.tone, self.min_score)


@router.post("/support")
async def support(body: SupportRequest, request: Request) -> Any:
    service: ModelService = request.app.state.service
    knowledge: KnowledgeService = request.app.state.knowledge
    question = body.question()
    llm = service.ready_llm(body.model)
    bot, turn = await knowledge.run(_prepare, knowledge, llm, body, request_owner(request), question)
    admission, deltas = None, None  # a hand-off asks no model
    if not turn.handoff:
        params = default_params(body.max_tokens)
        await run_in_threadpool(service.check_prompt, turn.prompt_ids, params, prompt_param="messages")
        admission = service.admit()
        deltas = stream_text(service, admission, turn.prompt_ids, params, cache_salt(request, None))
    if body.stream:
        return event_stream(_events(bot, turn, deltas), admission)
    try:
        text = await join_text(deltas, client_gone(request)) if deltas is not None else ""
    finally:
        if admission is not None:
            admission.release()
    return bot.finish(turn, text).to_dict()


def _prepare(knowledge: KnowledgeService, llm: LLM, body: SupportRequest, owner: str,
             question: str) -> tuple[SupportBot, SupportTurn]:
    """In a knowledge-service thread: retrieval, the hand-off decision and the prompt."""
    info = knowledge.store.info(body.kb, owner=owner)  # not the caller's: KnowledgeBaseNotFoundError (404)
    bot = SupportBot(llm, knowledge.store, knowledge.embedder(info.embedder), body.kb, owner, body.config(),
                     history=body.history())
    return bot, bot.prepare(question, body.max_tokens)


async def _events(bot: SupportBot, turn: SupportTurn,
                  deltas: AsyncGenerator[str, None] | None) -> AsyncIterator[dict[str, str]]:
    streamed = StreamedText()
    if deltas is not None:
        async for event in delta_events(deltas, streamed):
            yield event
        if streamed.has_failed:
            return
    reply = bot.finish(turn, streamed.text)
    yield {"event": "sources", "data": sse_json(reply.to_dict()["sources"])}
    if reply.handoff:
        yield {"event": "handoff", "data": sse_json({"reason": reply.reason, "question": turn.question,
                                                     "answer": reply.answer})}
