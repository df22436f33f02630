"""LoRA training speed, side by side: Luodi (its own model modules + peft) vs HF transformers + peft.

Same weights (SmolLM2-135M-Instruct, written once as an HF directory by Luodi's convert path),
same data (random token ids, every token trained), rank 8 on all seven projections, alpha 16,
AdamW, batch 1, seq 512. Per setting (bf16 / fp32, gradient checkpointing off / on): training
tokens/s over the measured steps (after warm-up), tokens per CPU-second (steadier than wall time
on a shared machine) and peak RSS. Each measurement runs in a fresh process; the two stacks
alternate (A B A B ...); medians and Luodi/transformers ratios are reported.

    python benchmarks/finetune_speed.py [--reps 2] [--steps 4] [--seq-len 512] [--threads 2]

Writes benchmarks/results/finetune_speed.json. Needs the `finetune` and `test` extras.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_speed.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WARMUP = 2


def hf_dir() -> Path:
    """SmolLM2 as an HF-compatible bf16 directory (Luodi's saved format, scheme none)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from model_cache import cache_home, pulled_model_path

    from luodi.quant_tools.quantize import QuantizeOptions, quantize_model_dir

    out = cache_home() / "bench" / "smollm2-135m-instruct-bf16"
    if not (out / "model.safetensors").is_file():
        quantize_model_dir(str(pulled_model_path("smollm2-135m-instruct")), QuantizeOptions(scheme="none"), out)
    return out


def _token_ids(seq_len: int, vocab: int) -> list[int]:
    import torch

    return torch.randint(0, vocab, (seq_len,), generator=torch.Generator().manual_seed(0)).tolist()


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def run_luodi(path: str, dtype: str, checkpointing: bool, seq_len: int, steps: int) -> list[float]:
    from luodi.finetune.data import TrainingExample
    from luodi.finetune.forward import batch_loss, pack
    from luodi.finetune.lora import (
        LoraOptions, attach_lora, autocast, enable_gradient_checkpointing, load_for_training, mixed_precision,
    )
    from luodi.finetune.train import make_optimizer

    loaded = load_for_training(path, device="cpu", dtype=dtype)
    model = attach_lora(loaded.model, LoraOptions(rank=8, alpha=16))
    if checkpointing:
        enable_gradient_checkpointing(model)
    ids = _token_ids(seq_len, loaded.config.vocab_size)
    batch = pack([TrainingExample(ids, ids, "bench")])
    optimizer = make_optimizer(model, 1e-4)
    model.train()
    times = []
    with mixed_precision(model):
        for _ in range(WARMUP + steps):
            start = _clocks()
            with autocast(model):
                loss = batch_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(_since(start))
    return times[WARMUP:]


def run_transformers(path: str, dtype: str, checkpointing: bool, seq_len: int, steps: int) -> list[float]:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0,
                                             bias="none"))
    ids = torch.tensor([_token_ids(seq_len, model.config.vocab_size)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    model.train()
    times = []
    for _ in range(WARMUP + steps):
        start = _clocks()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(_since(start))
    return times[WARMUP:]


def _child(stack: str, path: str, dtype: str, checkpointing: bool, seq_len: int, steps: int, threads: int,
           queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(threads)
    run = run_luodi if stack == "luodi" else run_transformers
    times = run(path, dtype, checkpointing, seq_len, steps)
    # Tokens whose next token is trained: seq_len - 1 per step for both (the shifted loss).
    # On a shared machine wall time swings with the neighbours' load; CPU seconds (all threads)
    # per token swing much less, so both are reported.
    tokens = (seq_len - 1) * len(times)
    queue.put({"tok_s": tokens / sum(wall for wall, _ in times),
               "tok_per_cpu_s": tokens / sum(cpu for _, cpu in times),
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def measure(stack: str, path: Path, dtype: str, checkpointing: bool, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(stack, str(path), dtype, checkpointing, args.seq_len, args.steps,
                                            args.threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--checkpointing", default="off,on")
    args = parser.parse_args()
    path = hf_dir()
    rows = []
    for dtype in args.dtypes.split(","):
        for ckpt in args.checkpointing.split(","):
            runs: dict[str, list[dict]] = {"luodi": [], "transformers": []}
            for _ in range(args.reps):
                for stack in runs:  # alternate A B A B
                    runs[stack].append(measure(stack, path, dtype, ckpt == "on", args))
                    print(json.dumps({"stack": stack, "dtype": dtype, "checkpointing": ckpt, **runs[stack][-1]}),
                          file=sys.stderr)
            keys = ("tok_s", "tok_per_cpu_s", "peak_rss_mib")
            med = {s: {k: statistics.median(r[k] for r in rs) for k in keys} for s, rs in runs.items()}
            rows.append({
                "dtype": dtype, "gradient_checkpointing": ckpt == "on", **{f"{s}": m for s, m in med.items()},
                "speed_ratio": med["luodi"]["tok_s"] / med["transformers"]["tok_s"],
                "cpu_speed_ratio": med["luodi"]["tok_per_cpu_s"] / med["transformers"]["tok_per_cpu_s"],
                "rss_ratio": med["luodi"]["peak_rss_mib"] / med["transformers"]["peak_rss_mib"],
                "runs": runs,
            })
    report = {
        "benchmark": "finetune_speed", "model": "smollm2-135m-instruct", "seq_len": args.seq_len, "batch": 1,
        "lora": {"rank": 8, "alpha": 16, "targets": TARGETS}, "steps": args.steps, "warmup": WARMUP,
        "threads": args.threads, "reps": args.reps, "machine": platform.processor() or platform.machine(),
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
