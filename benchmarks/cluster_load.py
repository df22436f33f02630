"""Scale-out on one box: replicas behind Luodi's gateway, by routing policy, from real HTTP streams.

Three measurements, each with its own replicas (real `luodi serve` processes) and the gateway in a
process of its own (the load generator runs in this one):
- scaling: aggregate decode tok/s through 2 replicas × 1 thread ÷ 1 replica × 1 thread (target
  ≥ 1.7 on 2 cores), each replica offered the same load (saturated), and also under one total load;
- prefix: a shared-prefix workload (several long system prompts, many users) through 2 replicas,
  TTFT p50 with prefix-aware routing ("latency" policy) ÷ round-robin (target ≤ 0.7);
- slo: a fast (bf16) and a slow (fp32) replica, 1 thread each, with a TPOT target between their
  speeds: the share of requests that meet it, latency-routed vs round-robin;
plus the router's own cost per decision (p50 / p99 over many decisions on 8 replicas with
remembered prefixes; target p99 ≤ 2 ms), and a Ray head's start-up time and resident memory.

Policies alternate within a measurement (A B A B) and medians are reported; on a shared 2-core
machine the ratios hold, the absolute figures drift.

    PYTHONPATH=. python benchmarks/cluster_load.py [--model smollm2-135m-instruct] [--reps 2] [--only router,ray,prefix,slo,scaling]

Writes benchmarks/results/cluster_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import random
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from luodi.cluster.gateway import GatewayConfig, create_gateway
from luodi.cluster.local import LocalReplicas, free_port
from luodi.cluster.prefixes import chain_hashes, prompt_text
from luodi.cluster.routing import ReplicaView, RouteRequest, Router

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cluster_load.json"
sys.path.insert(0, str(ROOT / "tests"))

TOPICS = ["rail tickets", "home insurance", "hotel bookings", "savings accounts", "mobile plans", "car rental",
          "air travel", "online courses", "food delivery", "gym memberships", "parcel shipping", "cloud storage",
          "concert tickets", "pet insurance", "bike sharing", "home repairs"]
# Sixteen system prompts of ~450 tokens; each replica's KV cache (--kv-cache-gb 0.1, ~4.5k tokens of
# SmolLM2) holds about ten of them: routed by prefix each replica keeps its half cached, routed
# round-robin both see all sixteen and evict. That is the regime prefix-aware routing is for.
PREFIX_KV_GB = "0.1"


def system_prompt(topic: str, salt: str = "") -> str:
    rules = " ".join(f"Rule {i}: answer questions about {topic} politely, cite the policy section, and never "
                     f"invent prices or dates that the policy does not state." for i in range(1, 13))
    return f"[{salt}] You are the support assistant for {topic}. {rules}"


# -- replicas and gateway ---------------------------------------------------------------------------------

@contextmanager
def replicas(groups: list[tuple[int, list[str], int | None]]):
    """Start groups of (count, extra `luodi serve` args, threads); yields {id: url} once all answer."""
    started = [LocalReplicas(count, args, threads, id_prefix=f"g{k}r") for k, (count, args, threads) in enumerate(groups)]
    for group in started:
        group.start()
    urls = {rid: url for group in started for rid, url in group.urls().items()}
    try:
        deadline = time.monotonic() + 600
        while not all(_healthy(url) for url in urls.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("replicas did not start within 10 minutes")
            time.sleep(0.5)
        yield urls
    finally:
        for group in started:
            group.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def gateway(urls: dict[str, str], policy: str, slo_tpot_ms: float | None = None):
    """The gateway in its own process, as `luodi serve --replicas` runs it: in this one it would share
    the load generator's interpreter lock and each would slow the other."""
    config = GatewayConfig(urls, policy=policy, slo_tpot_ms=slo_tpot_ms, queue_timeout_s=5.0)  # type: ignore[arg-type]
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve_gateway, args=(config, port), daemon=True)
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.1)
        time.sleep(1.0)  # a poll of every replica's figures
        yield url
    finally:
        process.terminate()
        process.join(10)


def _serve_gateway(config: GatewayConfig, port: int) -> None:
    import uvicorn

    uvicorn.run(create_gateway(config), host="127.0.0.1", port=port, log_level="warning")


# -- workload ------------------------------------------------------------------------------------------

async def one_stream(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int,
                     extra: dict | None = None) -> dict:
    body = {"model": "m", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, **(extra or {})}
    start = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:") and "content" in line and '"content":""' not in line.replace(" ", ""):
                stamps.append(time.perf_counter())
    if not stamps:
        return {"ttft": float("nan"), "tpot": float("nan"), "tokens": 0}
    tpot = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return {"ttft": stamps[0] - start, "tpot": tpot, "tokens": len(stamps)}


async def run_workload(url: str, requests: list[tuple[list[dict], int, dict | None]], concurrency: int) -> dict:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        async def bounded(item):
            async with limit:
                return await one_stream(client, url, *item)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(item) for item in requests))
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    return {"wall_s": wall, "tok_s": tokens / wall, "results": results,
            "ttft_p50": statistics.median(r["ttft"] for r in results),
            "ttft_p90": statistics.quantiles([r["ttft"] for r in results], n=10)[-1]}


def model_args(model: str, kv_cache_gb: str = "0.25") -> list[str]:
    from model_cache import pulled_model_path

    path = Path(model)
    return ["--model", str(path if path.exists() else pulled_model_path(model)), "--served-model-name", "m",
            "--kv-cache-gb", kv_cache_gb]


# -- measurements -------------------------------------------------------------------------------------

SCALING_CONCURRENCY = 16  # streams a replica is offered in the saturated run


def measure_scaling(model: str, reps: int) -> dict:
    """Aggregate decode tok/s, 2 replicas ÷ 1, two ways. Saturated (the ratio): each replica offered
    the same load, 16 streams and 32 requests per replica, so each runs the batch it would run alone
    and the ratio is what a second replica adds. Same total load (16 streams, 32 requests, whatever
    the replicas): each of 2 replicas then runs batches of 8, whose tok/s per replica is lower than at
    16 on this model, so that ratio also carries the batch-size effect, not only the scale-out."""
    users = [[{"role": "user", "content": f"Write a short note number {i} about the weather."}] for i in range(64)]
    work = [(m, 64, None) for m in users]
    figures: dict[str, list[float]] = {f"{n}x1 {load}": [] for n in (1, 2) for load in ("saturated", "same load")}
    loads = {"saturated": lambda count: (work[: 32 * count], SCALING_CONCURRENCY * count),
             "same load": lambda count: (work[:32], SCALING_CONCURRENCY)}
    for rep in range(reps):
        for count in (1, 2):
            with replicas([(count, model_args(model), 1)]) as urls, gateway(urls, "latency") as url:
                asyncio.run(run_workload(url, work[:4], 4))  # warm-up: step costs measured
                for load in sorted(loads, reverse=rep % 2 == 1):  # which load runs first alternates
                    figures[f"{count}x1 {load}"].append(asyncio.run(run_workload(url, *loads[load](count)))["tok_s"])
    median = {label: statistics.median(values) for label, values in figures.items()}
    return {"tok_s_1_replica_1_thread": round(median["1x1 saturated"], 1),
            "tok_s_2_replicas_1_thread": round(median["2x1 saturated"], 1),
            "ratio": round(median["2x1 saturated"] / median["1x1 saturated"], 3), "target": ">= 1.7",
            "load": f"{SCALING_CONCURRENCY} streams and 32 requests of 64 tokens per replica",
            "same_total_load": {"tok_s_1_replica": round(median["1x1 same load"], 1),
                                "tok_s_2_replicas": round(median["2x1 same load"], 1),
                                "ratio": round(median["2x1 same load"] / median["1x1 same load"], 3),
                                "load": f"{SCALING_CONCURRENCY} streams and 32 requests in all"}}


def shared_prefix_work(num: int, seed: int, salt: str = "") -> list[tuple[list[dict], int, dict | None]]:
    """Each run's prompts carry their own salt, so no run finds another's prefixes cached."""
    rng = random.Random(seed)
    work = []
    for i in range(num):
        topic = TOPICS[rng.randrange(len(TOPICS))]
        work.append(([{"role": "system", "content": system_prompt(topic, salt)},
                      {"role": "user", "content": f"Question {i}: what should I do next?"}], 8, None))
    return work


def measure_prefix(model: str, reps: int) -> dict:
    ttft: dict[str, list[float]] = {"latency": [], "round-robin": []}
    with replicas([(2, model_args(model, PREFIX_KV_GB), 1)]) as urls:
        for rep in range(reps):
            for policy in ("latency", "round-robin"):
                work = shared_prefix_work(64, seed=1, salt=f"{rep}-{policy}")
                with gateway(urls, policy) as url:
                    ttft[policy].append(asyncio.run(run_workload(url, work, 4))["ttft_p50"])
    prefix, rr = statistics.median(ttft["latency"]), statistics.median(ttft["round-robin"])
    return {"ttft_p50_s_prefix_aware": round(prefix, 4), "ttft_p50_s_round_robin": round(rr, 4),
            "ratio": round(prefix / rr, 3), "reduction": round(1 - prefix / rr, 3), "target": "<= 0.7",
            "requests": 64, "system_prompts": len(TOPICS), "prompt_chars": len(system_prompt(TOPICS[0])),
            "kv_cache_gb_per_replica": float(PREFIX_KV_GB), "concurrency": 4, "max_tokens": 8}


def measure_slo(model: str, reps: int) -> dict:
    users = [[{"role": "user", "content": f"Describe city number {i} in two sentences."}] for i in range(24)]
    groups = [(1, model_args(model), 1), (1, [*model_args(model), "--dtype", "float32"], 1)]
    met: dict[str, list[float]] = {"latency": [], "round-robin": []}
    with replicas(groups) as urls:
        with gateway(urls, "round-robin") as url:  # measure both classes' speed first
            probe = asyncio.run(run_workload(url, [(m, 48, None) for m in users[:8]], 2))
        tpots = sorted(r["tpot"] for r in probe["results"])
        target_s = (tpots[0] + tpots[-1]) / 2  # between the fast and the slow class
        for _ in range(reps):
            for policy in ("latency", "round-robin"):
                with gateway(urls, policy, slo_tpot_ms=target_s * 1000) as url:
                    out = asyncio.run(run_workload(url, [(m, 48, None) for m in users], 3))
                met[policy].append(sum(r["tpot"] <= target_s for r in out["results"]) / len(users))
    return {"target_tpot_ms": round(target_s * 1000, 2), "fast_tpot_ms": round(tpots[0] * 1000, 2),
            "slow_tpot_ms": round(tpots[-1] * 1000, 2),
            "met_share_latency_routed": statistics.median(met["latency"]),
            "met_share_round_robin": statistics.median(met["round-robin"]), "target": ">= 0.95 while capacity allows",
            "classes": "fast: bf16; slow: fp32 (twice the bytes a step reads); 1 thread each", "concurrency": 3}


def measure_router(decisions: int = 20000) -> dict:
    router = Router("latency")
    views = [ReplicaView(f"r{i}", healthy=True, base_s=0.02, per_row_s=0.002, per_token_s=1e-3) for i in range(8)]
    rng = random.Random(0)
    work = shared_prefix_work(256, seed=2, salt="router")
    times = []
    for i in range(decisions):
        messages = work[i % len(work)][0]
        start = time.perf_counter()
        text = prompt_text({"messages": messages})
        decision = router.choose(views, RouteRequest(chain_hashes(text), len(text), 64, 0.05, None))
        times.append(time.perf_counter() - start)
        decision.replica.in_flight = rng.randrange(4)
    times.sort()
    return {"decisions": decisions, "replicas": 8, "p50_ms": round(times[len(times) // 2] * 1000, 4),
            "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 4), "target": "p99 <= 2 ms",
            "includes": "hashing the prompt (~1.9k chars) and choosing"}


RAY_HEAD = """
import sys, time
start = time.perf_counter()
import ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
print(time.perf_counter() - start, flush=True)
sys.stdin.read()
ray.shutdown()
"""


def measure_ray_head() -> dict:
    """A local Ray head started by `ray.init` (one CPU, no dashboard, usage statistics off) in a
    child process: seconds until it is up, and the resident memory of the head's processes (the
    driver, GCS, raylet and their helpers) once settled. Only this head's own processes are counted
    and stopped."""
    import os
    import subprocess

    import psutil

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen([sys.executable, "-c", RAY_HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        started_s = float(head.stdout.readline())
        time.sleep(3.0)  # let its helper processes settle
        root = psutil.Process(head.pid)
        procs = [root, *root.children(recursive=True)]
        rss = sum(p.memory_info().rss for p in procs if p.is_running())
        names = sorted({p.name() for p in procs if p.is_running()})
    finally:
        head.stdin.close()
        head.wait(timeout=60)
    return {"start_s": round(started_s, 2), "rss_mib": round(rss / 2**20, 1), "processes": names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--only", default="router,ray,prefix,slo,scaling")
    args = parser.parse_args()
    wanted = args.only.split(",")
    report: dict = {"model": args.model, "machine": platform.machine(), "reps": args.reps}
    for name, measure in (("router", lambda: measure_router()), ("ray", measure_ray_head), ("prefix", lambda: measure_prefix(args.model, args.reps)),
                          ("slo", lambda: measure_slo(args.model, args.reps)),
                          ("scaling", lambda: measure_scaling(args.model, args.reps))):
        if name in wanted:
            report[name] = measure()
            print(json.dumps({name: report[name]}), flush=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**previous, **report}, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
