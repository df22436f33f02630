"""HTTP errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Owns the mapping from everything that can go wrong while serving — a `LuodiError` raised by the
engine or the protocol layer, a pydantic validation failure, malformed JSON, an unknown route, a
bug — to a status code and an error body. A bug becomes a 500 whose body says only "internal
error" (the traceback goes to the server log, never to the client).

Must not know about routes or the engine: it sees exceptions and returns responses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from luodi.errors import (
    InvalidParameterError,
    KnowledgeBaseExistsError,
    KnowledgeBaseNotFoundError,
    LuodiError,
    PromptTooLongError,
)

log = logging.getLogger("luodi.server")


class APIError(LuodiError):
    """An error with an HTTP status; subclasses fix the status, OpenAI `type` and `code`."""

    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code or type(self).code
        self.headers = headers or {}


class AuthenticationError(APIError):
    status_code = 401
    code = "invalid_api_key"


class HostNotAllowedError(APIError):
    """A `Host` header a server without keys does not answer to (a DNS-rebinding page, say)."""

    status_code = 400
    code = "host_not_allowed"


class ModelNotServedError(APIError):
    status_code = 404
    code = "model_not_found"


class RequestTooLargeError(APIError):
    status_code = 413
    code = "request_too_large"


class QueueFullError(APIError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class ClientClosedRequest(APIError):
    """The client went away before its answer was ready; nothing reaches it (nginx's 499)."""

    status_code = 499
    code = "client_closed_request"


class ModelLoadingError(APIError):
    status_code = 503
    error_type = "service_unavailable"
    code = "model_loading"


_TYPES_BY_STATUS = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
_CODES_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    # A message may quote client text; one holding a lone surrogate could not be sent as UTF-8.
    message, param = _sendable(message), _sendable(param) if param is not None else None
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _sendable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_payload(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception; unknown exceptions become an opaque 500."""
    if isinstance(exc, APIError):
        return exc.status_code, error_body(str(exc), exc.error_type, exc.param, exc.code), exc.headers
    if isinstance(exc, PromptTooLongError):
        return 400, error_body(str(exc), "invalid_request_error", exc.param, "context_length_exceeded"), {}
    if isinstance(exc, InvalidParameterError):
        return 400, error_body(str(exc), "invalid_request_error", exc.param, "invalid_value"), {}
    if isinstance(exc, KnowledgeBaseNotFoundError):
        return 404, error_body(str(exc), "invalid_request_error", code="knowledge_base_not_found"), {}
    if isinstance(exc, KnowledgeBaseExistsError):
        return 409, error_body(str(exc), "invalid_request_error", code="knowledge_base_exists"), {}
    if isinstance(exc, LuodiError):
        return 400, error_body(str(exc), "invalid_request_error"), {}
    return (
        500,
        error_body(
            "internal error while serving the request; the server log has the details",
            "server_error",
            code="internal_error",
        ),
        {},
    )


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers or None)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line naming the first bad field, and that field as OpenAI's `param` (dotted path)."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON ({detail}); send a JSON object", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if param is None:
        return (
            f"the request body is invalid: {first.get('msg', 'unexpected value')}; send a JSON object",
            None,
        )
    count = len(exc.errors())
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    return f"{param}: {first.get('msg', 'invalid value')}{more}", param


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = validation_message(exc)
    code = None if param is None else "invalid_value"
    return _json(400, error_body(message, "invalid_request_error", param, code))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no route {request.method} {request.url.path}; see /openapi.json for the API"
    else:
        message = str(exc.detail)
    error_type = _TYPES_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "server_error")
    return _json(
        status, error_body(message, error_type, code=_CODES_BY_STATUS.get(status)), dict(exc.headers or {})
    )


async def _on_luodi_error(request: Request, exc: Exception) -> JSONResponse:
    status, body, headers = error_payload(exc)
    return _json(status, body, headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    status, body, headers = error_payload(exc)
    return _json(status, body, headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(LuodiError, _on_luodi_error)
    app.add_exception_handler(Exception, _on_unexpected)
