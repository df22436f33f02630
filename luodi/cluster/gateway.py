"""`create_gateway`: one OpenAI-compatible endpoint in front of several Luodi replicas.

Generation (`/v1/chat/completions`, `/v1/completions`) is routed per request (`routing.Router`:
latency target, then cached prefix) and carried with failover (`forward`). Everything else — the
web chat, `/v1/models`, knowledge bases, apps — is passed to a healthy replica as it is, since
replicas share the machine's (or the cluster's) storage and keys. `/metrics` merges every
replica's metrics under a `replica` label with the gateway's own (routing time, retries);
`/v1/cluster/status` lists the replicas; `/health` is ok while any replica is.

Auth: the gateway checks the key itself when given a keys file (the same file the replicas use),
and passes the client's `Authorization` on, so each replica knows the caller as it would alone.

Luodi's extensions a request may carry for the gateway: `slo_tpot_ms` (the time per output token
it needs; default: the gateway's), `session_id` (or the `X-Session-Id` header, or OpenAI's
`user`): a conversation's requests stick to one replica for its prefix cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sse_starlette import EventSourceResponse

from luodi.cluster.forward import (
    NoReplicaError, StreamState, forwarded_headers, is_resumable, num_choices, open_stream, relay, send_once,
)
from luodi.cluster.metrics import merge_replica_metrics
from luodi.cluster.prefixes import chain_hashes, prompt_text
from luodi.cluster.replicas import Replica, ReplicaPool
from luodi.cluster.routing import Policy, RouteRequest, Router
from luodi.errors import InvalidParameterError
from luodi.server.app import AuthMiddleware, BodyLimitMiddleware, HostCheckMiddleware
from luodi.server.auth import KeyStore
from luodi.server.errors import ModelLoadingError, QueueFullError, install_error_handlers

_GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
_MAX_BODY_BYTES = 64 * 2**20  # a document upload to a knowledge base passes through
_ROUTING_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    replicas: dict[str, str]  # id -> base URL
    policy: Policy = "latency"
    slo_tpot_ms: float | None = None  # the default target; None: none
    when_no_replica_fits: Literal["queue", "reject"] = "queue"
    queue_timeout_s: float = 60.0
    imbalance: int = 4
    api_keys_file: Any = None  # Path | None
    allowed_hosts: tuple[str, ...] | None = ("localhost", "127.0.0.1", "[::1]")
    poll_s: float = 0.25
    replica_key: str | None = None  # sent to replicas for a client that sent no key (Ray replicas demand one)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.routing = Histogram("luodi_gateway_routing_seconds", "Time the gateway spends choosing a replica.",
                                 buckets=_ROUTING_BUCKETS, registry=self.registry)
        self.routed = Counter("luodi_gateway_requests", "Generation requests routed, by replica.", ["replica"],
                              registry=self.registry)
        self.failovers = Counter("luodi_gateway_failovers", "Requests moved to another replica after a failure.",
                                 registry=self.registry)
        self.refused = Counter("luodi_gateway_refused", "Requests no replica could take (429 / 503).", ["reason"],
                               registry=self.registry)


class Gateway:
    def __init__(self, config: GatewayConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.pool = ReplicaPool(config.replicas, client, config.poll_s)
        self.router = Router(config.policy, config.imbalance)
        self.metrics = _Metrics()
        self._turn = 0

    # -- choosing --------------------------------------------------------------------------------
    async def pick(self, route: RouteRequest, tried: frozenset[str]) -> Replica | None:
        """The replica for `route` not in `tried`; waits (queue) or refuses when none fits the target."""
        deadline = time.monotonic() + self.config.queue_timeout_s
        while True:
            start = time.perf_counter()
            decision = self.router.choose(self.pool.views(), route, exclude=tried)
            self.metrics.routing.observe(time.perf_counter() - start)
            if decision is not None:
                decision.replica.in_flight += 1
                self.metrics.routed.labels(decision.replica.id).inc()
                return self.pool.by_view(decision.replica)
            untried = [v for v in self.pool.views() if v.healthy and v.id not in tried]
            if not untried:
                return None  # nothing left to try: the caller says so
            if self.config.when_no_replica_fits == "reject" or time.monotonic() > deadline:
                self.metrics.refused.labels("slo").inc()
                raise QueueFullError(
                    f"no replica can serve this request within its target of {route.slo_tpot_s * 1000:.0f} ms "
                    "per token now; retry shortly or relax slo_tpot_ms", headers={"Retry-After": "1"})
            await asyncio.sleep(0.02)

    def release(self, replica: Replica, succeeded: bool) -> None:
        replica.view.in_flight -= 1
        if succeeded:
            replica.served += 1
        else:
            replica.failures += 1
            self.metrics.failovers.inc()

    def any_healthy(self) -> Replica:
        healthy = self.pool.healthy()
        if not healthy:
            self.metrics.refused.labels("down").inc()
            raise ModelLoadingError("no replica is up yet; retry shortly (GET /v1/cluster/status shows them)",
                                    headers={"Retry-After": "2"})
        self._turn += 1
        return healthy[self._turn % len(healthy)]

    # -- requests --------------------------------------------------------------------------------
    async def generate(self, request: Request, path: str) -> Response:
        body = await _json_body(request)
        route = self._route_request(body, request)
        headers = forwarded_headers(dict(request.headers), self.config.replica_key)
        pick = partial(self.pick, route)
        self.any_healthy()  # 503 at once when nothing is up (not a wait)
        if not body.get("stream"):
            try:
                response = await send_once(self.client, pick, self.release, path, body, headers)
            except NoReplicaError as exc:
                raise ModelLoadingError(f"{exc}: every replica failed it; retry shortly") from None
            return _passed_on(response, await response.aread())
        state = StreamState(client_wants_ids=bool(body.get("return_token_ids")), resumable=is_resumable(body),
                            num_choices=num_choices(body))
        upstream = {**body, "return_token_ids": True} if state.resumable else body
        tried: set[str] = set()
        try:
            replica, response = await open_stream(self.client, pick, self.release, path, upstream, headers, tried)
        except NoReplicaError as exc:
            raise ModelLoadingError(f"{exc}: every replica failed it; retry shortly") from None
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            self.release(replica, True)  # the replica answered: the request was bad, not the replica
            return _passed_on(response, content)
        events = relay(self.client, pick, self.release, path, upstream, headers, (replica, response), state, tried)
        return EventSourceResponse(events, ping=15)

    def _route_request(self, body: dict[str, Any], request: Request) -> RouteRequest:
        slo_ms = body.pop("slo_tpot_ms", None)
        if slo_ms is not None and (isinstance(slo_ms, bool) or not isinstance(slo_ms, int | float) or slo_ms <= 0):
            raise InvalidParameterError(f"slo_tpot_ms {slo_ms!r} must be a positive number of milliseconds",
                                        param="slo_tpot_ms")
        slo_ms = slo_ms if slo_ms is not None else self.config.slo_tpot_ms
        session = body.pop("session_id", None) or request.headers.get("x-session-id") or body.get("user")
        text = prompt_text(body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        return RouteRequest(chain_hashes(text), len(text), int(max_tokens) if isinstance(max_tokens, int) else 256,
                            slo_ms / 1000 if slo_ms else None, str(session) if session else None)

    async def pass_on(self, request: Request) -> Response:
        """Any other route, to a healthy replica as it is (streamed back: SSE routes stream)."""
        replica = self.any_healthy()
        url = f"{replica.url}{request.url.path}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        if self.config.replica_key and "authorization" not in request.headers:
            headers["authorization"] = f"Bearer {self.config.replica_key}"
        upstream = self.client.build_request(request.method, url, params=request.query_params, headers=headers,
                                             content=await request.body(), timeout=httpx.Timeout(600.0, connect=5.0))
        try:
            response = await self.client.send(upstream, stream=True)
        except httpx.TransportError as exc:
            replica.mark_down(f"{request.url.path} failed: {type(exc).__name__}")
            raise ModelLoadingError("the replica for this request failed; retry it") from None
        return StreamingResponse(_stream_bytes(response), status_code=response.status_code,
                                 headers=_response_headers(response))

    def status(self) -> dict[str, Any]:
        return {
            "policy": self.config.policy,
            "slo_tpot_ms": self.config.slo_tpot_ms,
            "replicas": [_replica_status(r) for r in self.pool.replicas.values()],
        }


def _replica_status(replica: Replica) -> dict[str, Any]:
    report, view = replica.report, replica.view
    return {
        "id": replica.id, "url": replica.url, "status": replica.status, "detail": replica.detail,
        "pid": report.get("pid"), "host": httpx.URL(replica.url).host, "node": report.get("node"),
        "hardware": report.get("hardware"),
        "in_flight": view.in_flight, "waiting": report.get("waiting"), "running": report.get("running"),
        "tpot_ms": round(view.tpot() * 1000, 2) if view.base_s is not None else None,
        "prefix_cache_hit_rate": report.get("prefix_cache_hit_rate"),
        "served": replica.served, "failures": replica.failures,
    }


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidParameterError("the request body is not JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidParameterError("the request body must be a JSON object")
    return body


def _response_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}


def _passed_on(response: httpx.Response, content: bytes) -> Response:
    return Response(content, status_code=response.status_code, headers=_response_headers(response))


async def _stream_bytes(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for piece in response.aiter_raw():
            yield piece
    finally:
        await response.aclose()


def create_gateway(config: GatewayConfig) -> FastAPI:
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256))
    gateway = Gateway(config, client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.pool.poll_once()
        gateway.pool.start()
        yield
        await gateway.pool.stop()
        await client.aclose()

    app = FastAPI(title="Luodi gateway", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.gateway = gateway
    install_error_handlers(app)

    for path in _GENERATION_PATHS:
        app.add_api_route(path, partial(_generate, gateway, path), methods=["POST"])

    @app.get("/health")
    async def health() -> JSONResponse:
        up = len(gateway.pool.healthy())
        body = {"status": "ok" if up else "loading", "replicas_up": up, "replicas": len(gateway.pool.replicas)}
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/v1/cluster/status")
    async def cluster_status() -> dict[str, Any]:
        return gateway.status()

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        texts = await _replica_metrics(gateway, request)
        content = generate_latest(gateway.metrics.registry) + merge_replica_metrics(texts)
        return Response(content, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def other(request: Request, path: str) -> Response:
        return await gateway.pass_on(request)

    keys = KeyStore.open(config.api_keys_file) if config.api_keys_file is not None else None
    app.add_middleware(BodyLimitMiddleware, limit_of=lambda scope: _MAX_BODY_BYTES)
    if keys is not None:
        app.add_middleware(AuthMiddleware, keys=keys)
    elif config.allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=config.allowed_hosts)
    return app


async def _generate(gateway: Gateway, path: str, request: Request) -> Response:
    return await gateway.generate(request, path)


async def _replica_metrics(gateway: Gateway, request: Request) -> dict[str, str]:
    headers = forwarded_headers(dict(request.headers), gateway.config.replica_key)

    async def one(replica: Replica) -> tuple[str, str | None]:
        try:
            response = await gateway.client.get(f"{replica.url}/metrics", headers=headers, timeout=5.0)
            return replica.id, response.text if response.status_code == 200 else None
        except httpx.HTTPError:
            return replica.id, None

    pairs = await asyncio.gather(*(one(r) for r in gateway.pool.healthy()))
    return {rid: text for rid, text in pairs if text is not None}

