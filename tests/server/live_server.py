"""Helpers for server tests: real uvicorn servers on 127.0.0.1, and reading /metrics.

Each test module starts its own server (with its own engine settings) on a free loopback port,
in a thread of the test process, around one `LLM` built on the session's loaded weights.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from luodi.engine.engine import EngineConfig
from luodi.llm import LLM
from luodi.models.loader import LoadedModel
from luodi.server import ModelService, ServerConfig, create_app
from luodi.server.kb_service import KnowledgeService

SMOLLM2 = "smollm2-135m-instruct"
MODEL_ID = "smollm2"
SMALL_KV = 32 * 2**20  # plenty for short test prompts; keeps each module's engine small


def make_llm(loaded: LoadedModel, **engine: object) -> LLM:
    return LLM(loaded, EngineConfig(**{"kv_cache_bytes": SMALL_KV, **engine}))  # type: ignore[arg-type]


@contextmanager
def running_server(service: ModelService, knowledge: KnowledgeService | None = None) -> Iterator[str]:
    """Serve `service` (and `knowledge`, the app's default if None) on a free 127.0.0.1 port in a
    thread; yields the base URL; stops on exit."""
    with serving(create_app(service, knowledge)) as url:
        yield url


@contextmanager
def serving(app: object) -> Iterator[str]:
    """Serve an ASGI app on a free 127.0.0.1 port in a thread; yields the base URL; stops on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def service_for(llm: LLM, **config: object) -> ModelService:
    """A ready service for `llm` under the test model id, with `ServerConfig` overrides."""
    return ModelService.from_llm(ServerConfig(model_name=MODEL_ID, **config), llm)  # type: ignore[arg-type]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(base_url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """/metrics as {"name{labels}": value} (labels as written by prometheus-client)."""
    response = httpx.get(base_url + "/metrics", headers=headers)
    response.raise_for_status()
    samples = {}
    for line in response.text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll until `predicate()` holds; a generous deadline only guards against hanging forever."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
