"""Server load: `luodi serve` under 1, 4, 16 and 64 concurrent streams on loopback.

Each level sends exactly `concurrency` streaming completions at once (a 128-token prompt of token
ids, 128 tokens out, `ignore_eos`), bounded in count and by a per-level deadline. Per level:
aggregate generation tok/s (all output tokens / wall time), TTFT p50/p99, time per output token
p50/p99 (per request: (last - first) / (n - 1)), errors, and the server's peak RSS (VmHWM).
Then the prefix-cache check: a ~1,000-token shared system prompt, first request vs a second one
that shares it (TTFT ratio).

Each server runs in its own process as a user starts it. The peer is llama.cpp's `llama-server`
on the same GGUF (build it with `bash benchmarks/build_llama_server.sh`), restarted per level with
`--parallel` = concurrency and continuous batching; Luodi and llama-server alternate level by level.
Without a llama-server binary only Luodi is measured.

    python benchmarks/serve_load.py [--levels 1,4,16,64] [--max-tokens 128] [--kv-cache-gb 1]
                                    [--llama-server PATH | --no-peer]
    python benchmarks/serve_load.py --levels ""    # only the prefix-cache check → serve_load_prefix.json

Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
PROMPT_TOKENS = 128
MODEL = "smollm2-135m-instruct"
LAUNCH = "import typer; from luodi.cli.serve import serve; typer.run(serve)"
THREADS = 2
SLOT_CONTEXT = 512  # llama-server tokens per slot: prompt + output + slack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_llama_server() -> Path:
    home = Path(os.environ.get("LUODI_HOME") or Path.home() / ".cache" / "luodi")
    return home / "build" / "llama-server" / "bin" / "llama-server"


def start_llama_server(binary: Path, gguf: Path, port: int, parallel: int) -> subprocess.Popen:
    args = [str(binary), "-m", str(gguf), "--port", str(port), "--host", "127.0.0.1",
            "--parallel", str(parallel), "--cont-batching", "-c", str(SLOT_CONTEXT * max(parallel, 2)),
            "--threads", str(THREADS), "--threads-batch", str(THREADS), "--no-webui"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_server(port: int, max_num_seqs: int, kv_cache_gb: float, max_queue: int) -> subprocess.Popen:
    args = [
        sys.executable,
        "-c",
        LAUNCH,
        "--model",
        MODEL,
        "--port",
        str(port),
        "--max-num-seqs",
        str(max_num_seqs),
        "--kv-cache-gb",
        str(kv_cache_gb),
        "--max-queue",
        str(max_queue),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_stream(client: httpx.AsyncClient, body: dict) -> dict:
    start = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": response.status_code}
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stamps.append(time.perf_counter())
    if not stamps:
        return {"error": "no tokens"}
    tokens = tokens or len(stamps)
    tpot = (stamps[-1] - stamps[0]) / (tokens - 1) if tokens > 1 else float("nan")
    return {"ttft": stamps[0] - start, "tpot": tpot, "tokens": tokens}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_level(base: str, model_id: str, concurrency: int, max_tokens: int, deadline_s: float) -> dict:
    prompt = [(i * 7919) % 40000 + 100 for i in range(PROMPT_TOKENS)]  # [PROMPT_TOKENS] fixed ids
    body = {
        "model": model_id,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base, timeout=deadline_s, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    one_stream(client, {**body, "prompt": [_first_token(concurrency, i), *prompt[1:]]})
                    for i in range(concurrency)
                )
            ),
            deadline_s,
        )
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "wall_s": round(wall, 3),
        "aggregate_tok_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "ttft_p50_s": round(percentile([r["ttft"] for r in ok], 0.5), 3),
        "ttft_p99_s": round(percentile([r["ttft"] for r in ok], 0.99), 3),
        "tpot_p50_ms": round(1000 * percentile([r["tpot"] for r in ok], 0.5), 1),
        "tpot_p99_ms": round(1000 * percentile([r["tpot"] for r in ok], 0.99), 1),
    }


def _first_token(level: int, index: int) -> int:
    """A distinct first token per request and level, so no request finds another's prompt cached
    (block hashes chain from the first block)."""
    return 1000 + 100 * level + index


def prefix_cache_check(base: str, model_id: str, reps: int = 3) -> dict:
    """TTFT of a request with a ~1,000-token system prompt, then of one sharing it; `reps` times
    with a different system prompt each time (so no rep finds the previous one cached), medians."""
    # One kept-alive connection, opened before the clock starts, as an application holds it:
    # a fresh httpx client per request adds ~20 ms of client set-up to each measurement.
    with httpx.Client(base_url=base, timeout=300) as client:
        client.get("/v1/models").raise_for_status()

        def ttft(system: str, question: str) -> float:
            body = {
                "model": model_id,
                "max_tokens": 1,
                "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            }
            start = time.perf_counter()
            client.post("/v1/chat/completions", json=body).raise_for_status()
            return time.perf_counter() - start

        pairs = []
        for rep in range(reps):
            system = f"Catalogue {rep}. " + "You answer questions about the company's hardware catalogue, politely and briefly. " * 60
            pairs.append((ttft(system, "Do you sell hammers?"), ttft(system, "Do you sell nails?")))
    first, second = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    return {
        "first_ttft_s": round(first, 4),
        "second_ttft_s": round(second, 4),
        "ratio": round(statistics.median(b / a for a, b in pairs), 4),
        "reps": [[round(a, 4), round(b, 4)] for a, b in pairs],
    }


def measure(base: str, proc: subprocess.Popen, level: int, max_tokens: int, deadline: float) -> dict:
    model_id = httpx.get(base + "/v1/models").json()["data"][0]["id"]
    row = asyncio.run(run_level(base, model_id, level, max_tokens, deadline))
    row["peak_rss_mib"] = round(peak_rss_mib(proc.pid), 1)
    return row


class LlamaServerPeer:
    """llama-server, restarted for each level with --parallel = that level."""

    def __init__(self, binary: Path, gguf: Path) -> None:
        self.binary, self.gguf = binary, gguf

    def run(self, level: int, max_tokens: int, deadline: float, prefix: bool = False) -> dict:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_llama_server(self.binary, self.gguf, port, level)
        try:
            wait_ready(base, proc)
            if prefix:
                model_id = httpx.get(base + "/v1/models").json()["data"][0]["id"]
                return prefix_cache_check(base, model_id)
            asyncio.run(run_level(base, "x", 2, 8, deadline))  # warm-up
            return measure(base, proc, level, max_tokens, deadline)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _peer(args: argparse.Namespace) -> LlamaServerPeer | None:
    if args.no_peer:
        return None
    binary = Path(args.llama_server) if args.llama_server else default_llama_server()
    if not binary.exists():
        print(f"no llama-server at {binary} (bash benchmarks/build_llama_server.sh): Luodi only", file=sys.stderr)
        return None
    from luodi.loading.catalog import resolve_model

    return LlamaServerPeer(binary, resolve_model(MODEL))


def _ratios(luodi: dict, peer: dict) -> dict:
    return {
        "aggregate_tok_s": round(luodi["aggregate_tok_s"] / peer["aggregate_tok_s"], 2),
        "ttft_p50": round(luodi["ttft_p50_s"] / peer["ttft_p50_s"], 2),
        "ttft_p99": round(luodi["ttft_p99_s"] / peer["ttft_p99_s"], 2),
        "tpot_p50": round(luodi["tpot_p50_ms"] / peer["tpot_p50_ms"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--kv-cache-gb", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=600.0, help="Seconds allowed per level.")
    parser.add_argument("--llama-server", help="llama-server binary (default: where build_llama_server.sh puts it).")
    parser.add_argument("--no-peer", action="store_true", help="Measure Luodi only.")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x]  # --levels "": the prefix-cache check only
    peer = _peer(args)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    most = max(levels, default=16)
    proc = start_server(port, max_num_seqs=most, kv_cache_gb=args.kv_cache_gb, max_queue=most)
    rows = []
    try:
        wait_ready(base, proc)
        model_id = httpx.get(base + "/v1/models").json()["data"][0]["id"]
        # Warm-up (not measured): first-use costs such as kernel builds or compilation.
        asyncio.run(run_level(base, model_id, 2, 8, args.deadline))
        for level in levels:
            row = {"luodi": measure(base, proc, level, args.max_tokens, args.deadline)}
            if peer is not None:
                row["llama_server"] = peer.run(level, args.max_tokens, args.deadline)
                row["ratio"] = _ratios(row["luodi"], row["llama_server"])
            rows.append(row)
            print(json.dumps(row), flush=True)
        prefix = {"luodi": prefix_cache_check(base, model_id)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if peer is not None:
        prefix["llama_server"] = peer.run(1, 1, args.deadline, prefix=True)
    print(json.dumps({"prefix_cache": prefix}), flush=True)
    result = {
        "model": MODEL,
        "peer": "llama-server (llama.cpp from llama-cpp-python's sdist), --parallel = concurrency" if peer else None,
        "prompt_tokens": PROMPT_TOKENS,
        "max_tokens": args.max_tokens,
        "kv_cache_gb": args.kv_cache_gb,
        "cpu": platform.processor() or platform.machine(),
        "threads": os.cpu_count(),
        "levels": rows,
        "prefix_cache": prefix,
    }
    path = RESULTS if levels else RESULTS.with_name("serve_load_prefix.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
