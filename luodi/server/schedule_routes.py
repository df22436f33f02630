"""The schedule assistant over HTTP, on the caller's own calendar (one per API key, as knowledge bases
are): `PUT /v1/apps/schedule/calendar` uploads it (the .ics file as the raw body), `GET` the same
path downloads it, `POST /v1/apps/schedule` turns a request in words into planned changes and
writes nothing, and `POST /v1/apps/schedule/apply` writes a plan's changes, atomically — every
change is shown before it is written.

The assistant runs in a worker thread; its model requests go through the server's async engine.
Must not know how requests become changes (`luodi.apps.schedule`) or where calendars are kept
(`CalendarStore`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from luodi.apps.schedule import ScheduleAssistant, ScheduleResult
from luodi.kb.store import check_text
from luodi.server.app_generation import threaded_generate
from luodi.server.calendars import CalendarStore
from luodi.server.kb_routes import request_owner
from luodi.server.openai_routes import cache_salt
from luodi.server.responses import ERROR_RESPONSES
from luodi.server.service import ModelService

router = APIRouter(prefix="/v1/apps/schedule", tags=["apps"], responses=ERROR_RESPONSES)
CALENDAR_PATH = "/v1/apps/schedule/calendar"  # an upload: the upload size limit
_ICS_BODY = {"requestBody": {"required": True, "content": {"text/calendar": {"schema": {
    "type": "string", "format": "binary", "description": "An iCalendar (.ics) file."}}}}}


class ScheduleRequest(BaseModel):
    request: str = Field(min_length=1, max_length=2000, description="e.g. 'move the review to Thursday 3pm'.")
    today: dt.datetime | None = Field(
        None, description="The current time, for 'tomorrow' or 'Tuesday' (ISO 8601; default: the server's clock).")
    model: str | None = None


class ApplyRequest(BaseModel):
    plan_id: str = Field(min_length=1, max_length=100)


def _calendars(request: Request) -> CalendarStore:
    return request.app.state.calendars


@router.put("/calendar", openapi_extra=_ICS_BODY)
async def upload_calendar(request: Request) -> dict[str, Any]:
    """Store (or replace) the caller's calendar; a malformed file is a 400 and changes nothing."""
    blob = await request.body()
    await run_in_threadpool(_calendars(request).save, request_owner(request), blob, "the uploaded calendar")
    return {"stored": True, "bytes": len(blob)}


@router.get("/calendar", response_class=Response)
async def download_calendar(request: Request) -> Response:
    blob = await run_in_threadpool(_calendars(request).read, request_owner(request))
    return Response(blob, media_type="text/calendar",
                    headers={"Content-Disposition": 'attachment; filename="calendar.ics"'})


@router.post("")
async def plan_changes(body: ScheduleRequest, request: Request) -> dict[str, Any]:
    """The answer and the planned changes, with the `plan_id` that applies them; nothing is written."""
    service: ModelService = request.app.state.service
    llm = service.ready_llm(body.model)
    text = check_text(body.request, "request", "request")
    owner, calendars = request_owner(request), _calendars(request)
    calendar, digest = await run_in_threadpool(calendars.open, owner)
    generate = threaded_generate(service, asyncio.get_running_loop(), cache_salt(request, None))
    now = body.today.replace(tzinfo=None) if body.today else None
    assistant = ScheduleAssistant(llm, calendar, now, generate)
    result: ScheduleResult = await asyncio.to_thread(assistant.handle, text)
    plan_id = calendars.remember(owner, result.changes, digest) if result.changes else None
    return {"answer": result.answer, "changes": [c.to_dict() for c in result.changes],
            "events": [e.to_dict() for e in result.events], "plan_id": plan_id}


@router.post("/apply")
async def apply_plan(body: ApplyRequest, request: Request) -> dict[str, Any]:
    """Write a plan's changes to the caller's calendar: 404 for an unknown plan, 409 for a stale one."""
    plan = await run_in_threadpool(_calendars(request).apply, request_owner(request), body.plan_id)
    return {"applied": True, "plan_id": body.plan_id, "changes": [c.to_dict() for c in plan.changes]}
