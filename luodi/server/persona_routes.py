"""`POST /v1/apps/persona`: a reply in character from a character card (V1/V2/V3, as JSON or as a
PNG card in base64); `/v1/apps/persona/greeting`: the card's greeting; `/v1/apps/persona/card`: the
card exported as V2/V3 JSON or as a PNG, every field kept.

The server keeps no chat: each request carries the card and the conversation after the greeting
(`messages`, the last one the user's). The prompt is `luodi.apps.persona`'s: the character's fixed
part first, so the engine's prefix cache computes it once per caller and reuses it every turn
(`cached_tokens` says how much it reused). With `"stream": true` the reply is server-sent events:
`{"delta": text}` messages, then `[DONE]`. `"print_prompt": true` returns the assembled prompt
(what `luodi persona --print-prompt` prints) and generates nothing.

Must not know how a card is read or a prompt laid out: it calls `cards` and `PersonaChat`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from luodi.apps.cards import PNG_SIGNATURE, Card, CardError, card_from_bytes, card_from_json, card_to_png
from luodi.apps.persona import Persona, PersonaChat, chat_params, greetings
from luodi.engine.engine import RequestOutput
from luodi.errors import InvalidParameterError
from luodi.kb.store import check_text
from luodi.llm import Message
from luodi.server.app_generation import StreamedText, delta_events, event_stream, join_text, stream_text
from luodi.server.kb_routes import client_gone
from luodi.server.openai_routes import cache_salt
from luodi.server.responses import ERROR_RESPONSES
from luodi.server.service import ModelService

router = APIRouter(prefix="/v1/apps/persona", tags=["apps"], responses=ERROR_RESPONSES)
PERSONA_PATHS = ("/v1/apps/persona", "/v1/apps/persona/greeting", "/v1/apps/persona/card")  # cards may be MBs


class CardBody(BaseModel):
    card: dict[str, Any] | None = Field(None, description="A character card as JSON (V1, V2 or V3).")
    card_png: str | None = Field(None, description="A PNG character card, base64-encoded.")

    def read_card(self) -> Card:
        if (self.card is None) == (self.card_png is None):
            raise InvalidParameterError("send the character card as exactly one of 'card' (its JSON) or "
                                        "'card_png' (a PNG card, base64)", param="card")
        if self.card is not None:
            return card_from_json(self.card, "card")
        return _png_card(self.card_png or "")


def _png_card(encoded: str) -> Card:
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CardError(f"card_png: not base64 ({exc}); send the PNG file's bytes base64-encoded") from exc
    if not blob.startswith(PNG_SIGNATURE):
        raise CardError("card_png: not a PNG file; send a JSON card as 'card' instead")
    return card_from_bytes(blob, "card_png")


class CharacterBody(CardBody):
    user_name: str = Field("User", min_length=1, max_length=64, description="The user's name ({{user}}).")
    greeting_index: int = Field(0, ge=0, le=1000, description="0: the first message; 1..: an alternate greeting.")

    def persona(self) -> Persona:
        return Persona(self.read_card(), user=self.user_name, greeting_index=self.greeting_index)


class PersonaMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=8000)


class PersonaRequest(CharacterBody):
    messages: list[PersonaMessage] = Field(
        min_length=1, max_length=1000, description="The chat after the greeting; the last is the user's message.")
    max_tokens: int = Field(200, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    seed: int | None = None
    stream: bool = False
    print_prompt: bool = Field(False, description="Return the assembled prompt; generate nothing.")
    model: str | None = None

    def user_text(self) -> str:
        last = self.messages[-1]
        if last.role != "user" or not last.content.strip():
            raise InvalidParameterError("the last message must be the user's: role 'user' with non-empty content",
                                        param="messages")
        return check_text(last.content.strip(), "message", "messages")

    def history(self, persona: Persona) -> list[Message]:
        turns = [{"role": m.role, "content": check_text(m.content, "message", "messages")} for m in self.messages[:-1]]
        if turns and turns[0]["role"] == "assistant" and turns[0]["content"].strip() == (persona.greeting() or ""):
            turns = turns[1:]  # the greeting is in the character's fixed part already
        return turns


@router.post("")
async def persona_reply(body: PersonaRequest, request: Request) -> Any:
    service: ModelService = request.app.state.service
    llm = service.ready_llm(body.model)
    persona = await run_in_threadpool(body.persona)
    chat = PersonaChat(llm, persona, history=body.history(persona))
    if body.print_prompt:
        return {"prompt": await run_in_threadpool(chat.prompt_text, body.user_text())}
    turn = await run_in_threadpool(chat.prepare, body.user_text(),
                                   chat_params(body.max_tokens, body.temperature, seed=body.seed))
    await run_in_threadpool(service.check_prompt, turn.prompt_ids, turn.params, prompt_param="messages")
    admission = service.admit()
    cached: list[int] = [0]

    def count_cached(out: RequestOutput) -> None:
        cached[0] = out.num_cached_tokens

    deltas = stream_text(service, admission, turn.prompt_ids, turn.params, cache_salt(request, None), count_cached)
    if body.stream:
        return event_stream(_events(deltas), admission)
    try:
        text = await join_text(deltas, client_gone(request))
    finally:
        admission.release()
    reply = chat.finish(turn, text)
    return {"reply": reply.reply, "prompt_tokens": reply.prompt_tokens, "cached_tokens": cached[0],
            "lore": [entry.content for entry in reply.lore]}


async def _events(deltas: AsyncGenerator[str, None]) -> AsyncIterator[dict[str, str]]:
    streamed = StreamedText()
    async for event in delta_events(deltas, streamed):
        yield event
    if not streamed.has_failed:
        yield {"data": "[DONE]"}


@router.post("/greeting")
async def persona_greeting(body: CharacterBody) -> dict[str, Any]:
    """The character's name and greeting ({{char}} and {{user}} filled in), and how many it has."""
    persona = await run_in_threadpool(body.persona)
    return {"name": persona.card.name, "greeting": persona.greeting(), "greetings": len(greetings(persona.card))}


@router.post("/card", response_model=None)
async def export_card(body: CardBody, format: Literal["json", "png"] = Query(
        "json", description="json: the V2/V3 card JSON; png: a PNG card (its own image, if it came as one).")
        ) -> dict[str, Any] | Response:
    """The card as a V2/V3 card (a V1 card becomes V2), every field kept, unknown ones included."""
    card = await run_in_threadpool(body.read_card)
    if format == "json":
        return card.to_json()
    png = await run_in_threadpool(card_to_png, card)
    return Response(png, media_type="image/png", headers={"Content-Disposition": 'attachment; filename="card.png"'})
