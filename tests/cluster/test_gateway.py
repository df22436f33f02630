"""The gateway over two real replica processes (`luodi serve --replicas 2`), through the openai client.

Oracles: each replica alone (the same prompts sent straight to it, greedy: with batch-invariant
kernels a request's tokens do not depend on its batch), Prometheus's own parser, and the OpenAI
error shape. The failover test kills a replica with SIGKILL while 32 streams run on both; every
stream must finish with the text the replica alone gives, and the killed replica must come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from luodi.cluster.local import free_port
from model_cache import cache_home, pulled_model_path

pytestmark = pytest.mark.slow

MODEL = "smollm2"
PROMPTS = ["Say hello.", "What is the capital of France?", "List three colors.", "请介绍一下长城。",
           "Tell me a short story about a cat.", "Write the word 'banana' five times.",
           "Explain rain to a child.", "写一首关于春天的短诗。"]
MAX_TOKENS = 40


def _status(url: str) -> dict:
    return httpx.get(f"{url}/v1/cluster/status", timeout=10).json()


def _wait_for(predicate, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def gateway():
    port = free_port()
    env = {**os.environ, "LUODI_TEST_HOME": str(cache_home())}  # the session's home: its native kernels are built
    command = [sys.executable, "-m", "luodi", "serve", "--model", str(pulled_model_path("smollm2-135m-instruct")),
               "--served-model-name", MODEL, "--replicas", "2", "--threads-per-replica", "1", "--port", str(port),
               "--kv-cache-gb", "0.05", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: httpx.get(f"{url}/health", timeout=5).json().get("replicas_up") == 2, "two replicas")
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def alone(gateway) -> dict[str, str]:
    """Each prompt's greedy answer from one replica, asked directly."""
    replica = _status(gateway)["replicas"][0]["url"]
    client = openai.OpenAI(base_url=f"{replica}/v1", api_key="none")
    return {p: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}],
                                              max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content
            for p in PROMPTS}


async def _stream(client: openai.AsyncOpenAI, prompt: str, chunks_seen: list[int], k: int) -> tuple[str, str]:
    text, reason = "", None
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=MAX_TOKENS, temperature=0, stream=True)
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reason = choice.finish_reason or reason
        chunks_seen[k] += 1
    return text, reason


def test_killing_a_replica_mid_stream_loses_no_request(gateway, alone):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(32)]
    chunks_seen = [0] * len(prompts)

    async def run() -> list[tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="none", max_retries=0, timeout=300)
        tasks = [asyncio.ensure_future(_stream(client, p, chunks_seen, k)) for k, p in enumerate(prompts)]
        while sum(1 for n in chunks_seen if n >= 3) < 8:  # streams are under way on both replicas
            await asyncio.sleep(0.01)
        victim = max(_status(gateway)["replicas"], key=lambda r: r["in_flight"])
        os.kill(victim["pid"], signal.SIGKILL)
        results = await asyncio.gather(*tasks)
        await client.close()
        return results, victim

    results, victim = asyncio.run(run())
    for prompt, (text, reason) in zip(prompts, results, strict=True):
        assert text == alone[prompt], prompt
        assert reason in ("stop", "length")
    after = {r["id"]: r for r in _status(gateway)["replicas"]}
    assert after[victim["id"]]["failures"] >= 1  # the gateway saw it die and moved its streams
    assert all(r["in_flight"] == 0 for r in after.values())  # every request counted out where it ended
    _wait_for(lambda: {r["id"]: r for r in _status(gateway)["replicas"]}[victim["id"]]["status"] == "ok",
              "the killed replica to rejoin")
    rejoined = {r["id"]: r for r in _status(gateway)["replicas"]}[victim["id"]]
    assert rejoined["pid"] != victim["pid"]


def test_token_ids_resume_and_openai_errors_through_the_gateway(gateway, alone):
    client = httpx.Client(base_url=gateway, timeout=120)
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": MAX_TOKENS,
            "temperature": 0}
    full = client.post("/v1/chat/completions", json={**body, "return_token_ids": True}).json()
    ids = full["choices"][0]["token_ids"]
    assert full["choices"][0]["message"]["content"] == alone[PROMPTS[1]] and len(ids) == full["usage"]["completion_tokens"]
    plain = client.post("/v1/chat/completions", json=body).json()
    assert "token_ids" not in plain["choices"][0]  # OpenAI's shape unless asked
    # Resuming after 5 tokens gives the rest: the ids after them, the text after theirs.
    rest = client.post("/v1/chat/completions", json={**body, "resume_token_ids": ids[:5], "return_token_ids": True}).json()
    assert rest["choices"][0]["token_ids"] == ids[5:]
    assert alone[PROMPTS[1]].endswith(rest["choices"][0]["message"]["content"])
    for bad, param in (({**body, "slo_tpot_ms": -1}, "slo_tpot_ms"), ({**body, "resume_token_ids": [10**9]},
                                                                        "resume_token_ids")):
        response = client.post("/v1/chat/completions", json=bad)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    response = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not JSON" in response.json()["error"]["message"]


def test_metrics_status_and_other_routes(gateway):
    client = httpx.Client(base_url=gateway, timeout=60)
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    replicas = {s.labels["replica"] for s in families["luodi_num_requests_running"].samples}
    assert replicas == {"r0", "r1"}
    assert families["luodi_gateway_routing_seconds"].samples
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL  # passed on to a replica
    assert client.get("/").status_code == 200 and "<html" in client.get("/").text.lower()
    status = subprocess.run([sys.executable, "-m", "luodi", "cluster", "status", "--url", gateway, "--json"],
                            capture_output=True, text=True, timeout=60)
    listed = json.loads(status.stdout)
    assert [r["id"] for r in listed["replicas"]] == ["r0", "r1"] and all(r["pid"] for r in listed["replicas"])
