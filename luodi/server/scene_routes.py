"""`POST /v1/apps/scene`: several characters at one table (a murder-mystery game, a game's NPCs),
each speaking in turn.

The server keeps no table: each request carries the scene (the `luodi scene` file's JSON), the
transcript so far, the user's new line if any, and who speaks next (every character once, in the
scene's order, by default); the answer is their lines, to append to the transcript. Each
character's prompt holds only its own secret (`luodi.apps.scene`), and its fixed system message
leads every turn, so the prefix cache keeps it. `"print_prompt": true` returns each speaker's
assembled prompt instead of generating.

The table is played in a worker thread; its model requests go through the server's async engine.
Must not know how characters are prompted: it calls `SceneChat`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from luodi.apps.persona import chat_params
from luodi.apps.scene import Line, Scene, SceneChat, scene_from_dict
from luodi.errors import InvalidParameterError
from luodi.kb.store import check_text
from luodi.server.app_generation import threaded_generate
from luodi.server.openai_routes import cache_salt
from luodi.server.responses import ERROR_RESPONSES
from luodi.server.service import ModelService

router = APIRouter(prefix="/v1/apps", tags=["apps"], responses=ERROR_RESPONSES)


class SceneLine(BaseModel):
    speaker: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=4000)


class SceneRequest(BaseModel):
    scene: dict[str, Any] = Field(description="title, setting, user?, characters [{name, public, secret, style?}].")
    transcript: list[SceneLine] = Field([], max_length=500, description="The lines said so far, in order.")
    message: str | None = Field(None, max_length=4000, description="The user's new line, heard by every character.")
    speakers: list[str] | None = Field(
        None, max_length=32, description="Who speaks next, in order; default: every character once.")
    max_tokens: int = Field(80, ge=1, le=1024)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    seed: int | None = None
    print_prompt: bool = Field(False, description="Return each speaker's assembled prompt; generate nothing.")
    model: str | None = None

    def table(self, scene: Scene) -> list[Line]:
        names = {scene.user, *(c.name for c in scene.characters)}
        for index, line in enumerate(self.transcript):
            if line.speaker not in names:
                raise InvalidParameterError(f"transcript.{index}.speaker {line.speaker!r} is neither the user "
                                            f"nor a character of the scene", param=f"transcript.{index}.speaker")
        return [Line(line.speaker, check_text(line.text, "line", "transcript")) for line in self.transcript]

    def speaking(self, scene: Scene) -> list[str]:
        names = self.speakers if self.speakers is not None else [c.name for c in scene.characters]
        for name in names:
            scene.character(name)  # a name not in the scene: InvalidParameterError naming the cast
        return names


@router.post("/scene")
async def scene_round(body: SceneRequest, request: Request) -> dict[str, Any]:
    service: ModelService = request.app.state.service
    llm = service.ready_llm(body.model)
    scene = scene_from_dict(body.scene)
    generate = threaded_generate(service, asyncio.get_running_loop(), cache_salt(request, None))
    table = SceneChat(llm, scene, body.table(scene), generate)
    speakers = body.speaking(scene)
    if body.message is not None:
        table.say(check_text(body.message, "message", "message"))
    if body.print_prompt:
        return {"prompts": {name: await asyncio.to_thread(_prompt_text, table, name) for name in speakers}}
    params = chat_params(body.max_tokens, body.temperature, seed=body.seed)
    lines = await asyncio.to_thread(lambda: [table.speak(name, params) for name in speakers])
    return {"lines": [{"speaker": line.speaker, "text": line.text, "leaked": line.leaked,
                       "prompt_tokens": line.prompt_tokens} for line in lines]}


def _prompt_text(table: SceneChat, name: str) -> str:
    return table.llm.tokenizer.apply_chat_template(table.messages_for(table.scene.character(name)))
