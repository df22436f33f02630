"""Decode speed of SmolLM2 INT8 and INT4 at each forced instruction-set level (LUODI_CPU_ISA).

    python benchmarks/isa_speed.py [--reps 3] [--threads 2] [--tokens 64]

SmolLM2-135M-Instruct is quantized once (int8, int4 g32, round-to-nearest); then each measurement
is a fresh process with LUODI_CPU_ISA set, levels alternating (avx2, avx512vnni, avx512bf16,
generic, avx2, ...), batch-1 greedy decode of `--tokens` tokens after a 16-token prompt. At the avx2
and generic levels torch and oneDNN are held to AVX2 as well (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2), so the whole process runs what an AVX2-only CPU would: generic there is
Luodi before its AVX2 kernels; at avx512vnni to AVX-512 with VNNI and without BF16 (a Cascade Lake
or Ice Lake server). Reports medians, the ratios to generic and to avx512bf16, and writes
benchmarks/results/isa_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "isa_speed.json"
LEVELS = ("avx2", "avx512vnni", "avx512bf16", "generic")
SCHEMES = {"int8": {"scheme": "int8"}, "int4-g32": {"scheme": "int4", "group_size": 32, "method": "rtn"}}
AVX2_PROCESS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# What torch and oneDNN may use at each level, so the whole process runs what such a CPU would.
LEVEL_PROCESS = {"generic": AVX2_PROCESS, "avx2": AVX2_PROCESS, "avx512bf16": {},
                 "avx512vnni": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}}


def quantize(scratch: Path) -> dict[str, Path]:
    from luodi.loading.catalog import pull
    from luodi.quant_tools.quantize import QuantizeOptions, quantize_model_dir

    source = pull("smollm2-135m-instruct", progress=False)
    paths = {}
    for name, options in SCHEMES.items():
        paths[name] = scratch / name
        quantize_model_dir(str(source), QuantizeOptions(**options), paths[name])
    return paths


def child(path: str, threads: int, tokens: int) -> dict:
    """Runs in the measured process: load, warm up, decode; tok/s and the kernels in use."""
    import torch

    from luodi.engine.engine import EngineConfig, LLMEngine
    from luodi.engine.sampling import SamplingParams
    from luodi.kernels import fused, lowbit
    from luodi.models.loader import load_model

    torch.set_num_threads(threads)
    loaded = load_model(path, device="cpu", dtype="bfloat16")
    engine = LLMEngine(loaded.model, config=EngineConfig(enable_prefix_caching=False))
    prompt = list(range(1000, 1016))

    def decode(max_tokens: int) -> float:
        engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=max_tokens + 1, ignore_eos=True))
        engine.stats.history.clear()
        while engine.has_unfinished:
            engine.step()
        return max_tokens / sum(s for is_prompt, _, s in engine.stats.history if not is_prompt)

    decode(8)  # warm-up
    return {"tok_s": decode(tokens), "lowbit": lowbit.native_level(), "fused": fused.native_available(),
            "aten": torch.backends.cpu.get_cpu_capability()}


def measure(level: str, path: Path, threads: int, tokens: int) -> dict:
    env = {**os.environ, "LUODI_CPU_ISA": level, **LEVEL_PROCESS[level]}
    code = f"import json, isa_speed; print(json.dumps(isa_speed.child({str(path)!r}, {threads}, {tokens})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, capture_output=True,
                            text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{level} {path.name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(samples: dict[str, dict[str, list[dict]]]) -> dict:
    out: dict = {}
    for scheme, by_level in samples.items():
        medians = {level: round(statistics.median(s["tok_s"] for s in runs), 2) for level, runs in by_level.items()}
        out[scheme] = {
            "tok_s": medians,
            "avx2_vs_generic": round(medians["avx2"] / medians["generic"], 2),
            "avx2_vs_avx512bf16": round(medians["avx2"] / medians["avx512bf16"], 2),
            "avx512vnni_vs_avx512bf16": round(medians["avx512vnni"] / medians["avx512bf16"], 2),
            "kernels": {level: {k: v for k, v in runs[0].items() if k != "tok_s"} for level, runs in by_level.items()},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    samples: dict[str, dict[str, list[dict]]] = {s: {level: [] for level in LEVELS} for s in SCHEMES}
    with tempfile.TemporaryDirectory() as scratch:
        paths = quantize(Path(scratch))
        for rep in range(args.reps):
            for scheme, path in paths.items():
                for level in LEVELS:
                    sample = measure(level, path, args.threads, args.tokens)
                    samples[scheme][level].append(sample)
                    print(json.dumps({"rep": rep, "scheme": scheme, "level": level, **sample}), flush=True)
    report = {
        "command": " ".join(["python", "benchmarks/isa_speed.py", *sys.argv[1:]]),
        "machine": platform.processor() or platform.machine(), "threads": args.threads, "tokens": args.tokens,
        "reps": args.reps, "results": summarize(samples),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
