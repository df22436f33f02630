"""The knowledge-base routes under /v1/kb: create, list, describe, delete, upload a document,
delete a document, search.

A document is uploaded as the raw request body of `PUT /v1/kb/{name}/documents/{filename}` (no
multipart parser needed; the web page sends the File object as is). Knowledge bases belong to the
caller's API key, by the key's id (never reused), and names are scoped per key: another key gets
404 for them exactly as for a name nobody has, and may create the same name for itself.

Must not know how documents are read or searched: it calls `KnowledgeService`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from luodi.server.responses import ERROR_RESPONSES
from luodi.kb.embedding import DEFAULT_EMBEDDER
from luodi.kb.store.base import LOCAL_OWNER
from luodi.server.kb_service import KnowledgeService, upload_name

router = APIRouter(prefix="/v1/kb", tags=["knowledge base"], responses=ERROR_RESPONSES)


class CreateKnowledgeBase(BaseModel):
    name: str = Field(min_length=1, max_length=64)  # the store checks the name rule
    embedder: str = DEFAULT_EMBEDDER


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000)
    k: int = Field(8, ge=1, le=50)


def knowledge(request: Request) -> KnowledgeService:
    return request.app.state.knowledge


def request_owner(request: Request) -> str:
    """The API key's id when auth is on; the local owner (shared with the CLI) when it is off."""
    return getattr(request.state, "api_key_id", None) or LOCAL_OWNER


@router.get("")
async def list_knowledge_bases(request: Request) -> dict[str, Any]:
    kbs = await knowledge(request).run(knowledge(request).list, request_owner(request))
    return {"object": "list", "data": kbs}


@router.post("", status_code=201)
async def create_knowledge_base(body: CreateKnowledgeBase, request: Request) -> dict[str, Any]:
    service = knowledge(request)
    return await service.run(service.create, body.name, request_owner(request), body.embedder)


@router.get("/{name}")
async def describe_knowledge_base(name: str, request: Request) -> dict[str, Any]:
    service = knowledge(request)
    return await service.run(service.describe, name, request_owner(request))


@router.delete("/{name}")
async def delete_knowledge_base(name: str, request: Request) -> dict[str, Any]:
    service = knowledge(request)
    await service.run(service.drop, name, request_owner(request))
    return {"name": name, "deleted": True}


@router.put("/{name}/documents/{filename}")
async def upload_document(name: str, filename: str, request: Request) -> dict[str, Any]:
    """Add (or replace) one document; the body is the file's bytes."""
    safe = upload_name(filename)
    content = await request.body()
    service = knowledge(request)
    return await service.upload(client_gone(request), name, request_owner(request), safe, content)


async def client_gone(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.delete("/{name}/documents/{source:path}")
async def delete_document(name: str, source: str, request: Request) -> dict[str, Any]:
    service = knowledge(request)
    await service.run(service.delete_document, name, request_owner(request), source)
    return {"source": source, "deleted": True}


@router.post("/{name}/search")
async def search_knowledge_base(name: str, body: SearchRequest, request: Request) -> dict[str, Any]:
    service = knowledge(request)
    hits = await service.run(service.search, name, request_owner(request), body.query, body.k)
    return {"object": "list", "data": [hit.as_json() for hit in hits]}
