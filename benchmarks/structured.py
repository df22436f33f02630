"""Constrained decoding speed: decode with a JSON schema vs without, in the same run, same prompts.

Per batch size (1 and 8): decode tok/s with a schema ÷ without (targets >= 0.95 at batch 1, >= 0.9
at batch 8). The unconstrained run generates exactly as many tokens per prompt as the constrained
one did (ignore_eos, max_tokens = that count), so both decode the same number of tokens. Also:
decode steps/s (the grammar's per-step overhead without fast-forward's gain), mask time per
token p50 / p99 (target p99 <= 1 ms), the share of output tokens fast-forwarded (steps saved),
and masks computed inline vs on a worker thread beside the forward pass. Runs alternate
(plain, schema, schema+overlap, plain, ...) and medians are reported.

Peer, same run, after Luodi's runs: llama-server (llama.cpp, built by
benchmarks/build_llama_server.sh) on the same GGUF as it is (its quantized weights; Luodi runs them
as bf16), 2 threads, `--parallel` = the batch, the same prompt token ids, with `json_schema` (its
grammar from the same schema) and without (as many tokens, ignore_eos); decode tok/s from its own
per-request timings. Skipped if the binary is missing.

    python benchmarks/structured.py [--model smollm2-135m-instruct] [--reps 2]

Writes benchmarks/results/structured.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_load: the llama-server launcher

RESULTS = Path(__file__).resolve().parent / "results" / "structured.json"
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "priority": {"enum": ["low", "medium", "high"]},
        "customer": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                                      "email": {"type": "string", "format": "email"}},
                     "required": ["name", "email"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "estimate_hours": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["title", "priority", "customer", "tags", "estimate_hours"],
    "additionalProperties": False,
}
PROMPTS = [
    "Alice (alice@example.com) cannot log in since this morning; urgent.",
    "Bob says the invoice PDF has the wrong VAT rate.",
    "Carol wants dark mode in the mobile app.",
    "Dan reports the export to CSV drops Chinese characters.",
    "Eve asks how to rotate her API key.",
    "Frank's dashboard loads in 30 seconds instead of 2.",
    "Grace needs an extra seat on the team plan.",
    "Heidi found a typo on the pricing page.",
]


def run_batch(llm, prompt_ids: list[list[int]], params: list) -> dict:
    """Run requests together; decode = everything after the step that gave every request its first token."""
    engine = llm.engine
    ids = [engine.add_request(p, sp) for p, sp in zip(prompt_ids, params, strict=True)]
    tokens = {i: [] for i in ids}
    forced = 0
    steps = 0
    decode_start = None
    live = {i: engine.scheduler.requests[i] for i in ids}
    while engine.has_unfinished:
        outs = engine.step()
        for out in outs:
            tokens[out.request_id].extend(out.new_token_ids)
        if decode_start is None:
            if all(tokens[i] for i in ids):
                decode_start = time.perf_counter()
                first = sum(len(t) for t in tokens.values())
        else:
            steps += 1
    end = time.perf_counter()
    forced = sum(r.num_forced_tokens for r in live.values())
    total = sum(len(t) for t in tokens.values())
    seconds = end - decode_start
    return {"tokens": [tokens[i] for i in ids], "decode_tok_s": (total - first) / seconds,
            "decode_steps_s": steps / seconds, "forced": forced, "total": total, "steps": steps}


def llama_server_batch(base: str, prompts: list[list[int]], max_tokens: list[int], schema: dict | None) -> dict:
    """Requests sent together to llama-server's /completion; decode tok/s from its own timings
    (tokens after each request's first, over the longest decode)."""
    import httpx

    def one(prompt: list[int], n: int) -> dict:
        body = {"prompt": prompt, "n_predict": n, "temperature": 0, "cache_prompt": False}
        if schema is not None:
            body["json_schema"] = schema
        else:
            body["ignore_eos"] = True
        return httpx.post(base + "/completion", json=body, timeout=600).json()

    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(one, prompts, max_tokens))
    timings = [r["timings"] for r in results]
    decoded = sum(t["predicted_n"] - 1 for t in timings)
    return {"decode_tok_s": decoded / (max(t["predicted_ms"] for t in timings) / 1e3),
            "tokens": [t["predicted_n"] for t in timings]}


def llama_server_peer(gguf: str, prompts: list[list[int]], reps: int) -> dict:
    """llama-server with and without the schema (see the module docstring), batch 1 and 8."""
    from serve_load import default_llama_server, free_port, start_llama_server, wait_ready

    binary = default_llama_server()
    if not binary.exists():
        return {"skipped": f"no llama-server at {binary} (bash benchmarks/build_llama_server.sh)"}
    out = {}
    for batch in (1, 8):
        port = free_port()
        proc = start_llama_server(binary, Path(gguf), port, batch)
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
            rates: dict[str, list[float]] = {"plain": [], "schema": []}
            groups = [[p] for p in prompts[:4]] if batch == 1 else [prompts]
            for _ in range(reps):
                for group in groups:
                    schema = llama_server_batch(f"http://127.0.0.1:{port}", group, [200] * len(group), SCHEMA)
                    plain = llama_server_batch(f"http://127.0.0.1:{port}", group, schema["tokens"], None)
                    rates["schema"].append(schema["decode_tok_s"])
                    rates["plain"].append(plain["decode_tok_s"])
        finally:
            proc.terminate()
            proc.wait()
        med = {k: statistics.median(v) for k, v in rates.items()}
        out[str(batch)] = {"decode_tok_s_plain": round(med["plain"], 2), "decode_tok_s_schema": round(med["schema"], 2),
                           "ratio_schema_over_plain": round(med["schema"] / med["plain"], 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    from luodi.engine.engine import EngineConfig, LLMEngine
    from luodi.engine.grammar import GrammarSpec
    from luodi.engine.sampling import SamplingParams
    from luodi.llm import LLM

    llm = LLM.load(args.model)
    grammar_engine = llm.engine
    overlap_engine = LLMEngine(llm.loaded.model, llm.tokenizer, EngineConfig(overlap_masks=True),
                               eos_token_ids=grammar_engine.eos_token_ids, grammar_backend=grammar_engine.grammar_backend)
    spec = GrammarSpec("json_schema", json.dumps(SCHEMA))
    prompts = [llm.prompt_ids(f"Turn this support request into a JSON ticket: {p}") for p in PROMPTS]
    constrained = SamplingParams(temperature=0, max_tokens=200, grammar=spec)
    grammar_engine.generate([prompts[0]], constrained)  # warm: tokenizer build, compile, caches

    report: dict = {"model": args.model, "machine": platform.processor() or platform.machine(), "batches": {}}
    for batch in (1, 8):
        rows: dict[str, list[float]] = {k: [] for k in ("plain", "schema", "schema_overlap", "steps_plain", "steps_schema")}
        mask_times: list[float] = []
        forced = total = 0
        for _ in range(args.reps):
            # batch 1: the first four prompts one by one; batch 8: all eight together
            groups = [[p] for p in prompts[:4]] if batch == 1 else [prompts]
            for group in groups:
                llm.engine = grammar_engine
                grammar_engine.runner.mask_seconds.clear()
                with_schema = run_batch(llm, group, [constrained] * len(group))
                mask_times += list(grammar_engine.runner.mask_seconds)
                forced += with_schema["forced"]
                total += with_schema["total"]
                plain_params = [SamplingParams(temperature=0, max_tokens=len(t), ignore_eos=True)
                                for t in with_schema["tokens"]]
                plain = run_batch(llm, group, plain_params)
                llm.engine = overlap_engine
                overlap = run_batch(llm, group, [constrained] * len(group))
                llm.engine = grammar_engine
                rows["plain"].append(plain["decode_tok_s"])
                rows["schema"].append(with_schema["decode_tok_s"])
                rows["schema_overlap"].append(overlap["decode_tok_s"])
                rows["steps_plain"].append(plain["decode_steps_s"])
                rows["steps_schema"].append(with_schema["decode_steps_s"])
                print(json.dumps({"batch": batch, "plain": plain["decode_tok_s"], "schema": with_schema["decode_tok_s"],
                                  "overlap": overlap["decode_tok_s"]}), flush=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        mask_times.sort()
        report["batches"][str(batch)] = {
            "decode_tok_s_plain": round(med["plain"], 2),
            "decode_tok_s_schema": round(med["schema"], 2),
            "decode_tok_s_schema_overlap_masks": round(med["schema_overlap"], 2),
            "ratio_schema_over_plain": round(med["schema"] / med["plain"], 3),
            "ratio_overlap_over_plain": round(med["schema_overlap"] / med["plain"], 3),
            "ratio_steps_per_s_schema_over_plain": round(med["steps_schema"] / med["steps_plain"], 3),
            "mask_ms_p50": round(1e3 * mask_times[len(mask_times) // 2], 4),
            "mask_ms_p99": round(1e3 * mask_times[int(len(mask_times) * 0.99)], 4),
            "forced_token_share": round(forced / total, 3),
        }
    peer = llama_server_peer(str(llm.loaded.path), prompts, args.reps)
    report["llama_server"] = peer
    if "skipped" not in peer:
        report["luodi_over_llama_server_schema"] = {
            b: round(report["batches"][b]["decode_tok_s_schema"] / peer[b]["decode_tok_s_schema"], 3) for b in peer}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
