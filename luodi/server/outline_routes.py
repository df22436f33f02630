"""`POST /v1/apps/outline`: the outline of an uploaded document (pdf / docx / html / md / txt, scans
OCRed), as JSON and Markdown.

The document comes as the `file` field of a multipart/form-data body. It is held to the knowledge
base's upload rules: the same size limit on the body (`max_upload_bytes`), the same file-name and
type check, the same loaders and ingestion limits (pages, OCR, time), spooled to disk the same way
and dropped as soon as it is read; a client that leaves stops the reading. Nothing is stored and
no model runs. A file that cannot be read is a 400 naming the problem.

Must not know how outlines are made: it calls `luodi.apps.outline`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from luodi.apps.outline import outline_document, to_markdown
from luodi.server.kb_routes import client_gone, request_owner
from luodi.server.kb_service import KnowledgeService, upload_name
from luodi.server.multipart import form_file
from luodi.server.responses import ERROR_RESPONSES

router = APIRouter(prefix="/v1/apps", tags=["apps"], responses=ERROR_RESPONSES)
# The body is read by hand (`form_file`), so its shape is declared for the OpenAPI schema here.
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "The document."}}}}}}}


@router.post("/outline", openapi_extra=_UPLOAD_BODY)
async def outline(request: Request) -> dict[str, Any]:
    """Upload one document as the form field `file`; get {outline, markdown}."""
    filename, content = form_file(request.headers.get("content-type", ""), await request.body())
    name = upload_name(filename)
    knowledge: KnowledgeService = request.app.state.knowledge
    result = await knowledge.run_upload(client_gone(request), name, knowledge.read_upload,
                                        request_owner(request), name, content, outline_document)
    return {"outline": result.to_dict(), "markdown": to_markdown(result)}
