"""`POST /v1/apps/minutes`: meeting minutes of a transcript sent as text, as JSON and Markdown.

The minutes are written by `luodi.apps.minutes` in a worker thread; its model requests go through
the server's async engine (admitted like any request, so they batch with other clients' and share
its prefix cache). A bad transcript (empty, no speaker turns) is a 400 naming the problem.
Must not know how minutes are made.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from luodi.apps.minutes import to_markdown, write_minutes
from luodi.apps.transcript import MAX_TRANSCRIPT_BYTES, parse_transcript
from luodi.server.app_generation import threaded_generate
from luodi.server.openai_routes import cache_salt
from luodi.server.responses import ERROR_RESPONSES
from luodi.server.service import ModelService

router = APIRouter(prefix="/v1/apps", tags=["apps"], responses=ERROR_RESPONSES)


class MinutesRequest(BaseModel):
    transcript: str = Field(max_length=MAX_TRANSCRIPT_BYTES, description="One 'Name: text' per turn, or subtitles.")
    format: Literal["txt", "md", "srt", "vtt"] = "txt"
    date: dt.date | None = Field(None, description="The meeting's date, if the transcript does not state it.")
    model: str | None = None


@router.post("/minutes")
async def minutes(body: MinutesRequest, request: Request) -> dict[str, Any]:
    service: ModelService = request.app.state.service
    llm = service.ready_llm(body.model)
    transcript = parse_transcript(body.transcript, name="transcript", subtitles=body.format in ("srt", "vtt"),
                                  meeting_date=body.date)
    generate = threaded_generate(service, asyncio.get_running_loop(), cache_salt(request, None))
    result = await asyncio.to_thread(write_minutes, llm, transcript, generate=generate)
    return {"minutes": result.to_dict(), "markdown": to_markdown(result)}

