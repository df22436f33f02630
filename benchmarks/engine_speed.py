"""Engine speed, side by side: Luodi vs llama.cpp (llama-cpp-python) vs HF transformers.

Same weights, same thread count, greedy. Per engine and model: prompt processing tok/s (pp128,
pp512), token generation tok/s at batch 1 (tg128), aggregate generation tok/s with 8 concurrent
sequences (b8), peak RSS. Each measurement runs in a fresh process; engines alternate
(A B C A B C ...) and medians are reported with ratios to the peers measured in the same run.

    python benchmarks/engine_speed.py [--models smollm2,gemma3,tinyllama] [--reps 3] [--threads 2]

Writes benchmarks/results/engine_speed.json. Needs the `bench` extra for llama.cpp.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "engine_speed.json"
PP_LENGTHS = (128, 512)
TG_TOKENS = 128
BATCH = 8


# -- models -------------------------------------------------------------------------------------
def tinyllama_gguf(directory: Path) -> Path:
    """A random-weight F16 GGUF of TinyLlama-1.1B's shape (speed does not depend on the values)."""
    import gguf

    path = directory / "tinyllama-1.1b-shape-f16.gguf"
    if path.exists():
        return path
    hidden, layers, heads, kv_heads, ffn, vocab = 2048, 22, 32, 4, 5632, 32000
    head_dim = hidden // heads
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    decoder_header(writer, context=2048, hidden=hidden, layers=layers, ffn=ffn, heads=(heads, kv_heads),
                   eps=1e-5, rope_base=10000.0, file_type=gguf.LlamaFileType.MOSTLY_F16, vocab=vocab)
    writer.add_rope_dimension_count(head_dim)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16))

    tensor("token_embd.weight", vocab, hidden)
    tensor("output.weight", vocab, hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for i in range(layers):
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    return path


def decoder_header(writer, *, context: int, hidden: int, layers: int, ffn: int, heads: tuple[int, int],
                   eps: float, rope_base: float, file_type: int, vocab: int) -> None:
    """The metadata of a decoder-only GGUF of this shape ((query, KV) heads) and a synthetic vocabulary."""
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads[0])
    writer.add_head_count_kv(heads[1])
    writer.add_layer_norm_rms_eps(eps)
    writer.add_rope_freq_base(rope_base)
    writer.add_file_type(file_type)
    _add_vocab(writer, vocab)


def _add_vocab(writer, vocab: int) -> None:
    """A byte-level BPE vocabulary of the right size: 256 bytes, merges of byte pairs, then of a pair
    and a byte (a vocabulary beyond 65,792 tokens)."""
    import itertools

    import gguf

    from luodi.loading.tokenizer import _byte_to_unicode

    chars = list(_byte_to_unicode().values())
    pairs = [a + b for a in chars for b in chars]
    merges = itertools.chain(((a, b) for a in chars for b in chars), ((ab, c) for ab in pairs for c in chars))
    tokens, merge_lines = list(chars), []
    for left, right in itertools.islice(merges, max(0, vocab - len(chars))):
        tokens.append(left + right)
        merge_lines.append(f"{left} {right}")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_token_merges(merge_lines)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def dense_hf_copy(gguf_path: Path, scratch: Path) -> Path:
    """The GGUF's weights dequantized into a bf16 HF safetensors directory, for transformers.

    transformers 5 keeps a GGUF's weights quantized and computes through its own kernels; the
    float peer we compare against is transformers on plain bf16 weights, loaded as users do.
    """
    import torch
    import transformers

    out = scratch / f"{gguf_path.stem}-hf-bf16"
    if (out / "config.json").exists():
        return out
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    config = quantized.config
    config.__dict__.pop("quantization_config", None)
    dense = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(quantized.state_dict())
    dense.to(torch.bfloat16).save_pretrained(out)
    return out


def model_paths(names: list[str], scratch: Path) -> dict[str, Path]:
    from luodi.loading.catalog import pull

    known = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}
    return {n: tinyllama_gguf(scratch) if n == "tinyllama" else pull(known[n]) for n in names}


def prompts(vocab: int, length: int, count: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(length + count)
    return [rng.integers(1000, min(vocab, 30000), length).tolist() for _ in range(count)]


# -- one engine, one process ------------------------------------------------------------------
def run_luodi(path: str, threads: int, dtype: str = "bfloat16") -> dict:
    import torch

    from luodi.engine.engine import EngineConfig, LLMEngine
    from luodi.engine.sampling import SamplingParams
    from luodi.engine.speculative import SpeculativeConfig
    from luodi.models.loader import load_model

    torch.set_num_threads(threads)
    loaded = load_model(path, device="cpu", dtype=dtype)
    # Plain decode like the peers': no prompt-lookup drafts (the engine's default; benchmarks/speculative.py).
    engine = LLMEngine(loaded.model, config=EngineConfig(
        max_num_batched_tokens=max(PP_LENGTHS), max_num_seqs=BATCH, enable_prefix_caching=False,
        speculative=SpeculativeConfig(method="none")))
    vocab = loaded.config.vocab_size
    out = {}

    def run(batch: list[list[int]], max_tokens: int) -> list[tuple[int, int, float]]:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        for p in batch:
            engine.add_request(p, params)
        engine.stats.history.clear()
        while engine.has_unfinished:
            engine.step()
        return list(engine.stats.history)

    run(prompts(vocab, 32), 8)  # warm-up
    for n in PP_LENGTHS:
        history = run(prompts(vocab, n), 1)
        out[f"pp{n}"] = n / sum(s for p, _, s in history if p)
    history = run(prompts(vocab, 16), TG_TOKENS + 1)
    out[f"tg{TG_TOKENS}"] = TG_TOKENS / sum(s for p, d, s in history if not p)
    history = run(prompts(vocab, 16, BATCH), TG_TOKENS + 1)
    out["b8_tg"] = BATCH * TG_TOKENS / sum(s for p, d, s in history if not p)
    return out


def run_llamacpp(path: str, threads: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    vocab = llm.n_vocab()
    out = {}
    llm.reset()
    llm.eval(prompts(vocab, 32)[0])  # warm-up
    for n in PP_LENGTHS:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompts(vocab, n)[0])
        out[f"pp{n}"] = n / (time.perf_counter() - start)
    llm.reset()
    llm.eval(prompts(vocab, 16)[0])
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    start = time.perf_counter()
    for _ in range(TG_TOKENS):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    out[f"tg{TG_TOKENS}"] = TG_TOKENS / (time.perf_counter() - start)
    return out


def run_transformers(path: str, threads: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    vocab = model.config.vocab_size
    out = {}

    def generate(batch: list[list[int]], new_tokens: int) -> float:
        ids = torch.tensor(batch)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    generate(prompts(vocab, 32), 2)  # warm-up
    for n in PP_LENGTHS:
        out[f"pp{n}"] = n / generate(prompts(vocab, n), 1)
    short = prompts(vocab, 16)
    first = generate(short, 1)
    out[f"tg{TG_TOKENS}"] = TG_TOKENS / (generate(short, TG_TOKENS + 1) - first)
    batch = prompts(vocab, 16, BATCH)
    first = generate(batch, 1)
    out["b8_tg"] = BATCH * TG_TOKENS / (generate(batch, TG_TOKENS + 1) - first)
    return out


RUNNERS = {
    "luodi": run_luodi,  # bf16, the CPU default
    "luodi-fp32": functools.partial(run_luodi, dtype="float32"),
    "luodi-fp16": functools.partial(run_luodi, dtype="float16"),
    "llama.cpp": run_llamacpp,
    "transformers": run_transformers,
}


def peak_rss_mb() -> float:
    """This process's own high-water mark (ru_maxrss would carry over the parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(engine: str, path: str, threads: int, queue: mp.Queue) -> None:
    try:
        result = RUNNERS[engine](path, threads)
        result["peak_rss_mb"] = peak_rss_mb()
        queue.put(result)
    except Exception as exc:  # report, don't hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def in_subprocess(target, *args):
    """Run `target(*args, queue)` in a fresh process and return what it puts on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _dense_copy_child(path: Path, scratch: Path, queue: mp.Queue) -> None:
    queue.put(dense_hf_copy(path, scratch))


def measure(engine: str, path: Path, threads: int, scratch: Path) -> dict:
    if engine == "transformers":  # converted in a child, so this driver process stays small
        path = in_subprocess(_dense_copy_child, path, scratch)
    return in_subprocess(_child, engine, str(path), threads)


# -- driver -------------------------------------------------------------------------------------
def summarize(samples: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for engine, runs in samples.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            summary[engine] = {"error": runs[-1]["error"]}
            continue
        keys = [k for k in ok[0] if isinstance(ok[0][k], float | int)]
        summary[engine] = {k: round(statistics.median(r[k] for r in ok if k in r), 1) for k in keys}
    return with_ratios(summary)


def with_ratios(summary: dict) -> dict:
    """Add Luodi's ratio to each peer, and its batch-8 over batch-1 generation rate."""
    summary = {k: v for k, v in summary.items() if not k.startswith("luodi_")}
    ours = summary.get("luodi", {})
    for peer in ("llama.cpp", "transformers"):
        theirs = summary.get(peer, {})
        ratios = {k: round(ours[k] / theirs[k], 2) for k in ours if k in theirs and k != "peak_rss_mb" and theirs[k]}
        if ratios:
            summary[f"luodi_vs_{peer}"] = ratios
    if "b8_tg" in ours and f"tg{TG_TOKENS}" in ours:
        summary["luodi_b8_vs_b1"] = round(ours["b8_tg"] / ours[f"tg{TG_TOKENS}"], 2)
    return summary


def merge_previous(report: dict) -> dict:
    """Runs of other models or engines stay in the results file; a model's engines re-measured now replace theirs."""
    if not RESULTS.exists():
        return report
    previous = json.loads(RESULTS.read_text())
    models = previous.get("models", {})
    for name, summary in report["models"].items():
        models[name] = summary if "luodi" in summary else with_ratios({**models.get(name, {}), **summary})
    return {**report, "models": models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3,tinyllama")
    parser.add_argument("--engines", default="luodi,llama.cpp,transformers")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scratch", default=str(Path(tempfile.gettempdir()) / "luodi-bench"))
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    engines = args.engines.split(",")
    paths = model_paths(args.models.split(","), scratch)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "python": sys.version.split()[0]}, "reps": args.reps, "models": {}}
    for name, path in paths.items():
        samples: dict[str, list[dict]] = {e: [] for e in engines}
        for rep in range(args.reps):
            for engine in engines:  # A B C A B C: drift hits every engine alike
                result = measure(engine, path, args.threads, scratch)
                samples[engine].append(result)
                print(json.dumps({"model": name, "rep": rep, "engine": engine, **result}), flush=True)
        report["models"][name] = summarize(samples)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(merge_previous(report), indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
