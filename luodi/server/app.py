"""`create_app`: the FastAPI application — routes, auth, limits, error mapping, metrics, web chat.

Owns how the pieces are put together: the OpenAI routes, `/health`, `/metrics`, the static web
chat at `/`, and three small ASGI middlewares (plain ASGI, not `BaseHTTPMiddleware`, so streamed
responses and disconnect notices pass through untouched):

- HTTP metrics (outermost): counts every response by route and status;
- auth: when a keys file is configured, every route except `/health` and the web page's static
  files needs `Authorization: Bearer KEY` (the page itself holds no secret; its API calls do);
- body limit: a body over `max_body_bytes` (`max_upload_bytes` for a document uploaded to a
  knowledge base, an outline's document, a calendar or a character card) is refused with 413
  before it is read in full;
- host check (a server without keys): a `Host` header not in `allowed_hosts` is refused with 400,
  so a web page on another name that DNS-rebinds to 127.0.0.1 cannot read the local server;
- security headers on every response: a CSP that allows only this origin's own files (no inline
  script, no eval, no framing), `X-Frame-Options: DENY`, `nosniff`, `Referrer-Policy: no-referrer`.

Must not know how generation works: that is `ModelService` and the routes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from luodi.kb.embedding import embedder_names
from luodi.paths import luodi_home
from luodi.server import responses as r
from luodi.server.auth import KeyStore, bearer_token
from luodi.server.errors import (
    APIError,
    AuthenticationError,
    HostNotAllowedError,
    RequestTooLargeError,
    error_payload,
    install_error_handlers,
)
from luodi.server.calendars import CalendarStore
from luodi.server.kb_routes import router as kb_router
from luodi.server.kb_service import KnowledgeService
from luodi.server.minutes_routes import router as minutes_router
from luodi.server.openai_routes import router as openai_router
from luodi.server.outline_routes import router as outline_router
from luodi.server.persona_routes import PERSONA_PATHS
from luodi.server.persona_routes import router as persona_router
from luodi.server.scene_routes import router as scene_router
from luodi.server.schedule_routes import CALENDAR_PATH
from luodi.server.schedule_routes import router as schedule_router
from luodi.server.support_routes import router as support_router
from luodi.server.service import ModelService, ServerConfig

STATIC_DIR = Path(__file__).parent / "static"
_OPEN_PATHS = ("/health", "/", "/favicon.ico")
_OPEN_PREFIXES = ("/static/",)


def create_app(service: ModelService, knowledge: KnowledgeService | None = None) -> FastAPI:
    """The app for one served model and the knowledge bases beside it. Starting it (lifespan)
    loads the model if not loaded yet."""
    knowledge = knowledge or KnowledgeService(partial(_open_kb_store, service.config.kb_store),
                                              limits=service.config.ingest_limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        knowledge.start()
        yield
        service.close()
        knowledge.close()

    # No /docs: Swagger UI loads scripts from a CDN, and this server must work offline.
    app = FastAPI(
        title="Luodi",
        summary="OpenAI-compatible API for a locally served model",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.knowledge = knowledge
    app.state.calendars = CalendarStore(service.config.calendars_dir or luodi_home() / "calendars")
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(kb_router)
    app.include_router(minutes_router)
    app.include_router(support_router)
    app.include_router(outline_router)
    app.include_router(persona_router)
    app.include_router(schedule_router)
    app.include_router(scene_router)
    _add_service_routes(app, service)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = partial(_openapi_naming_the_model, app, service)  # type: ignore[method-assign]

    config = service.config
    keys = KeyStore.open(config.api_keys_file) if config.api_keys_file is not None else None
    # add_middleware wraps: the last added runs first.
    app.add_middleware(BodyLimitMiddleware, limit_of=partial(_body_limit, config))
    if keys is not None:
        app.add_middleware(AuthMiddleware, keys=keys)
    elif config.allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=config.allowed_hosts)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(HTTPMetricsMiddleware, count=service.metrics.http_requests, route_of=_route_namer(app))
    return app


def _openapi_naming_the_model(app: FastAPI, service: ModelService) -> dict[str, Any]:
    """The OpenAPI schema, with `model` in each request body limited to the model (and its adapters) served."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            schema["components"]["schemas"][name]["properties"]["model"]["enum"] = service.model_ids()
        schema["components"]["schemas"]["EmbeddingRequest"]["properties"]["model"]["enum"] = list(embedder_names())
    return app.openapi_schema  # type: ignore[return-value]


def _add_service_routes(app: FastAPI, service: ModelService) -> None:
    @app.get("/health", response_model=r.HealthStatus, responses={503: {"model": r.HealthStatus}})
    async def health() -> JSONResponse:
        """200 once the model is loaded (with the figures a gateway routes by and the kernel paths in
        use); 503 while loading (detail: "compiling native … kernels (first start only)" while a first
        start builds them) or after a failed load."""
        body = r.HealthStatus(status=service.status, model=service.config.model_name, detail=service.detail,  # type: ignore[arg-type]
                              load=service.load(), kernels=service.kernels())
        return JSONResponse(body.model_dump(), status_code=200 if service.status == "ok" else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        content, content_type = service.metrics.render()
        return Response(content, media_type=content_type)

    @app.get("/", response_class=FileResponse, include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _open_kb_store(location: str | None):
    from luodi.kb.store import open_store

    return open_store(location)


_UPLOAD_PATH = re.compile(r"^/v1/kb/[^/]+/documents/[^/]+$")
# Other bodies that carry a file (a document to outline, a calendar, a PNG character card): the same limit.
_FILE_ROUTES = {("POST", "/v1/apps/outline"), ("PUT", CALENDAR_PATH),
                *(("POST", path) for path in PERSONA_PATHS)}


def _body_limit(config: ServerConfig, scope: Scope) -> int:
    if scope["method"] == "PUT" and _UPLOAD_PATH.match(scope["path"]):
        return config.max_upload_bytes
    if (scope["method"], scope["path"]) in _FILE_ROUTES:
        return config.max_upload_bytes
    return config.max_body_bytes


def _route_namer(app: FastAPI) -> Callable[[Scope], str]:
    """The route template a request matches (bounded label values), or "other"."""
    # Included routers are wrapped by FastAPI; match against their own routes.
    routes = [
        route for route in (*openai_router.routes, *kb_router.routes, *minutes_router.routes,
                            *support_router.routes, *outline_router.routes, *persona_router.routes,
                            *schedule_router.routes, *scene_router.routes, *app.router.routes)
        if isinstance(getattr(route, "path", None), str)
    ]

    def route_of(scope: Scope) -> str:
        for route in routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path  # type: ignore[attr-defined]
        return "other"

    return route_of


async def _send_error(exc: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    status, body, headers = error_payload(exc)
    await JSONResponse(body, status_code=status, headers=headers or None)(scope, receive, send)


class HTTPMetricsMiddleware:
    def __init__(self, app: ASGIApp, count: Counter, route_of: Callable[[Scope], str]) -> None:
        self.app, self.count, self.route_of = app, count, route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_of(scope)  # before the app runs: routing adds keys to the scope
        status = 500  # what the client sees if an error escapes before a response starts

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            self.count.labels(route, str(status)).inc()


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_open(scope["path"]):
            token = bearer_token(_header(scope, b"authorization"))
            stored = self.keys.identify(token) if token is not None else None
            if stored is None:
                message = (
                    "missing API key: send the header 'Authorization: Bearer KEY' (create a key with "
                    "`luodi keys add NAME`)"
                    if token is None
                    else "invalid API key"
                )
                await _send_error(
                    AuthenticationError(message, headers={"WWW-Authenticate": "Bearer"}), scope, receive, send
                )
                return
            # Routes read request.state.api_key_id: what a caller owns (its knowledge bases) is
            # keyed by the key's id, never reused, not by its name.
            scope.setdefault("state", {}).update(api_key_name=stored.name, api_key_id=stored.id)
        await self.app(scope, receive, send)


def _is_open(path: str) -> bool:
    return path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class HostCheckMiddleware:
    """Refuse a request whose `Host` (without its port) is not one of `allowed` (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, frozenset(name.lower() for name in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = _host_name(_header(scope, b"host") or "")
            if host not in self.allowed:
                allowed = ", ".join(sorted(self.allowed))
                message = (f"Host {host!r} is not served here (this server answers {allowed}); to reach it "
                           "by another name, start it with `luodi serve --allowed-host NAME`")
                await _send_error(HostNotAllowedError(message), scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """`Host` header value without its port: "localhost:8000" -> "localhost", "[::1]:80" -> "[::1]"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


# The web page loads only its own files and calls only its own API: nothing inline, nothing framed.
_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_of: Callable[[Scope], int]) -> None:
        self.app, self.limit_of = app, limit_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(RequestTooLargeError(_too_large(int(declared), limit)), scope, receive, send)
            return
        await self.app(scope, _limited(receive, limit), send)


def _too_large(size: int | None, limit: int) -> str:
    what = f"{size} bytes" if size is not None else "the request body"
    return f"{what} exceed the limit of {limit} bytes; send a smaller request"


def _limited(receive: Receive, limit: int) -> Receive:
    """Count a body sent without Content-Length (chunked) as it arrives."""
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                # An HTTPException passes through FastAPI's body parsing to our error handler.
                raise StarletteHTTPException(413, _too_large(None, limit))
        return message

    return receive_limited


__all__ = ["create_app"]
