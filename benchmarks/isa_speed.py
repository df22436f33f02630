"""Speed at each forced instruction-set level (LUODI_CPU_ISA), Luodi beside llama.cpp built per level.

    python benchmarks/isa_speed.py [--reps 3] [--threads 2] [--tokens 64] [--prompt 128]
        [--engines luodi,llama.cpp] [--models smollm2[,gemma3,tinyllama,qwen7b]]
        [--schemes int8,int4-g32[,bf16]]
        [--levels avx2,avx512vnni,avx512bf16,generic]

Each model (SmolLM2-135M-Instruct by default; Gemma 3 270M; random weights of TinyLlama-1.1B's
shape; random INT4 weights of Qwen2.5-7B's shape, written directly per engine by qwen7b_shape.py) is
quantized once per scheme, Luodi's way (int8, int4 g32 round-to-nearest, or the bf16
weights as loaded) and llama.cpp's at equal bits (`llama-quantize --pure` to Q8_0, Q4_0, F16, every
tensor including the vocabulary table at that type, as Luodi's). Then each measurement is a fresh
process, levels and engines alternating (luodi avx2, llama.cpp avx2, luodi avx512vnni, ...):
prompt processing of `--prompt` tokens (pp) and batch-1 greedy decode of `--tokens` tokens after a
16-token prompt (tg), warmed up first.

Luodi runs with LUODI_CPU_ISA set to each of avx2, avx512vnni, avx512bf16, generic. At the avx2 and
generic levels torch and oneDNN are held to AVX2 as well (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2), so the whole process runs what an AVX2-only CPU would: generic there is
Luodi before its AVX2 kernels; at avx512vnni to AVX-512 with VNNI and without BF16 (a Cascade Lake
or Ice Lake server). llama.cpp's `llama-bench` runs from a build per level
(benchmarks/build_llama_cpp_levels.sh: GGML_NATIVE=OFF and that level's instruction sets; it has no
generic level). Reports medians, Luodi's ratios to generic and to avx512bf16, luodi / llama.cpp per
level, and each engine's decode as a share of the machine's read bandwidth (weight bytes a token
reads x tok/s over lowbit_kernels.sustained_read_gbps, probed in a fresh process before and after
every measurement), and writes benchmarks/results/isa_speed.json.
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
LLAMA_LEVELS = ("avx2", "avx512vnni", "avx512bf16")
ENGINES = ("luodi", "llama.cpp")
MODELS = ("smollm2", "gemma3", "tinyllama", "qwen7b")  # engine_speed.model_paths's names, and qwen7b_shape
DIRECT_INT4 = "qwen7b"  # written at INT4 / Q4_0 directly (qwen7b_shape): its only scheme is int4-g32
SCHEMES = {"int8": {"scheme": "int8"}, "int4-g32": {"scheme": "int4", "group_size": 32, "method": "rtn"},
           "bf16": None}
LLAMA_TYPES = {"int8": "Q8_0", "int4-g32": "Q4_0", "bf16": "F16"}  # equal bits to Luodi's
DECODE_PROMPT = 16
AVX2_PROCESS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# What torch and oneDNN may use at each level, so the whole process runs what such a CPU would.
LEVEL_PROCESS = {"generic": AVX2_PROCESS, "avx2": AVX2_PROCESS, "avx512bf16": {},
                 "avx512vnni": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}}
BUILD_HINT = "bash benchmarks/build_llama_cpp_levels.sh"


# -- weights ------------------------------------------------------------------------------------
def luodi_weights(source: Path, schemes: list[str], scratch: Path) -> dict[str, Path]:
    """Luodi's model per scheme: a quantized directory, or the source itself for bf16."""
    from luodi.quant_tools.quantize import QuantizeOptions, quantize_model_dir

    paths = {}
    for name in schemes:
        if SCHEMES[name] is None:
            paths[name] = source
            continue
        paths[name] = scratch / f"{source.stem}-{name}"
        quantize_model_dir(str(source), QuantizeOptions(**SCHEMES[name]), paths[name])
    return paths


def llama_weights(source: Path, schemes: list[str], quantize: Path, scratch: Path) -> dict[str, Path]:
    """llama.cpp's GGUF per scheme, every tensor at the scheme's type (--pure)."""
    paths = {}
    for name in schemes:
        paths[name] = scratch / f"{source.stem}-{LLAMA_TYPES[name]}.gguf"
        command = [str(quantize), "--allow-requantize", "--pure", str(source), str(paths[name])]
        result = subprocess.run([*command, LLAMA_TYPES[name]], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"llama-quantize {name} failed:\n{result.stderr[-2000:]}")
    return paths


# -- Luodi, one level, one process --------------------------------------------------------------
def child(path: str, threads: int, tokens: int, prompt: int = 128) -> dict:
    """Runs in the measured process: load, warm up, prompt processing, decode; tok/s and the kernels."""
    import torch

    from luodi.engine.engine import EngineConfig, LLMEngine
    from luodi.engine.sampling import SamplingParams
    from luodi.engine.speculative import SpeculativeConfig
    from luodi.kernels import fused, lowbit
    from luodi.models.loader import load_model

    torch.set_num_threads(threads)
    loaded = load_model(path, device="cpu", dtype="bfloat16")
    # Plain decode, as llama-bench's: prompt-lookup drafts (the engine's default) would multiply the
    # tokens a step yields on the repetitive text a random-weight model writes.
    engine = LLMEngine(loaded.model, config=EngineConfig(
        enable_prefix_caching=False, max_num_batched_tokens=max(512, prompt),
        speculative=SpeculativeConfig(method="none")))

    def seconds(prompt_tokens: int, max_tokens: int, in_prompt: bool) -> float:
        tokens_in = list(range(1000, 1000 + prompt_tokens))
        engine.add_request(tokens_in, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        engine.stats.history.clear()
        while engine.has_unfinished:
            engine.step()
        return sum(s for prefilled, _, s in engine.stats.history if bool(prefilled) == in_prompt)

    seconds(DECODE_PROMPT, 9, False)  # warm-up, decode and a prompt of the measured length
    seconds(prompt, 1, True)
    return {"pp": prompt / seconds(prompt, 1, True),
            "tg": tokens / seconds(DECODE_PROMPT, tokens + 1, False),
            "lowbit": lowbit.native_level(), "fused": fused.native_available(),
            "aten": torch.backends.cpu.get_cpu_capability()}


def measure_luodi(level: str, path: Path, threads: int, tokens: int, prompt: int) -> dict:
    env = {**os.environ, "LUODI_CPU_ISA": level, **LEVEL_PROCESS[level]}
    code = (f"import json, isa_speed; "
            f"print(json.dumps(isa_speed.child({str(path)!r}, {threads}, {tokens}, {prompt})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"luodi {level} {path.name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- what decode reads, and how fast this machine reads -------------------------------------------
def decode_bytes(engine: str, scheme: str, path: Path, source: Path) -> int:
    """Weight bytes one decode step of `engine` reads (quant_report.bytes_per_token: every tensor but
    an untied embedding table) from its weights at `path`; Luodi's bf16 run loads the GGUF `source`
    as two bytes a weight."""
    from quant_report import bytes_per_token

    if engine == "luodi" and SCHEMES[scheme] is None:
        return bytes_per_token(source, gguf_as_bf16=True)
    return bytes_per_token(path)


def read_bandwidth(threads: int) -> float:
    """GB/s of lowbit_kernels.sustained_read_gbps, in a fresh process like the measurements."""
    code = f"import lowbit_kernels; print(lowbit_kernels.sustained_read_gbps({threads}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"read-bandwidth probe failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


# -- llama.cpp, one level, one process per test -------------------------------------------------
def llama_binaries(root: Path, levels: tuple[str, ...]) -> dict[str, Path]:
    """Each level's bin directory; a clear message naming the build script when one is missing."""
    missing = [lv for lv in levels if not (root / f"llama-cpp-{lv}" / "bin" / "llama-bench").is_file()]
    if missing:
        sys.exit(f"llama.cpp is not built for {', '.join(missing)} under {root}: run `{BUILD_HINT}` "
                 f"(with LUODI_HOME as here), or pass --llama-cpp-dir")
    return {lv: root / f"llama-cpp-{lv}" / "bin" for lv in levels}


def llama_bench(binary: Path, gguf: Path, threads: int, args: list[str]) -> dict:
    """One llama-bench test (warm-up included, one repetition); its JSON record."""
    command = [str(binary), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)[0]


def measure_llama(bin_dir: Path, gguf: Path, threads: int, tokens: int, prompt: int) -> dict:
    """pp at depth 0 and tg after a 16-token context (-d), as Luodi's child measures them."""
    bench = bin_dir / "llama-bench"
    pp = llama_bench(bench, gguf, threads, ["-p", str(prompt), "-n", "0"])
    tg = llama_bench(bench, gguf, threads, ["-p", "0", "-n", str(tokens), "-d", str(DECODE_PROMPT)])
    return {"pp": pp["avg_ts"], "tg": tg["avg_ts"], "build_commit": pp.get("build_commit"),
            "cpu_info": pp.get("cpu_info")}


# -- summary ------------------------------------------------------------------------------------
def medians(runs_by_level: dict[str, list[dict]], key: str) -> dict[str, float]:
    return {lv: round(statistics.median(s[key] for s in runs), 2)
            for lv, runs in runs_by_level.items() if runs}


def ratio(a: float, b: float) -> float:
    return round(a / b, 2)


def pct_of_read_bandwidth(runs_by_level: dict[str, list[dict]]) -> dict[str, float]:
    """Per level, the median of each decode's weight bytes per second / the read bandwidth probed
    around it, in %."""
    def pct(sample: dict) -> float:
        return 100 * sample["tg"] * sample["decode_bytes"] / (sample["read_gb_s"] * 1e9)

    return {lv: round(statistics.median(pct(s) for s in runs)) for lv, runs in runs_by_level.items() if runs}


def summarize_luodi(by_level: dict[str, list[dict]]) -> dict:
    tg = medians(by_level, "tg")
    out = {"tok_s": tg, "pp_tok_s": medians(by_level, "pp"),
           "tg_pct_of_read_bandwidth": pct_of_read_bandwidth(by_level)}
    for a, b in (("avx2", "generic"), ("avx2", "avx512bf16"), ("avx512vnni", "avx512bf16")):
        if a in tg and b in tg:
            out[f"{a}_vs_{b}"] = ratio(tg[a], tg[b])
    out["kernels"] = {lv: {k: v for k, v in runs[0].items() if k in ("lowbit", "fused", "aten")}
                      for lv, runs in by_level.items() if runs}
    return out


def summarize(samples: dict[str, dict[str, dict[str, list[dict]]]]) -> dict:
    """Per scheme: Luodi's figures (the keys of old), llama.cpp's, and luodi / llama.cpp per level."""
    out: dict = {}
    for scheme, by_engine in samples.items():
        entry = summarize_luodi(by_engine["luodi"]) if "luodi" in by_engine else {}
        if "llama.cpp" in by_engine:
            llama = {m: medians(by_engine["llama.cpp"], m) for m in ("pp", "tg")}
            entry["llama.cpp"] = {"type": LLAMA_TYPES[scheme], "tg_tok_s": llama["tg"],
                                  "pp_tok_s": llama["pp"],
                                  "tg_pct_of_read_bandwidth": pct_of_read_bandwidth(by_engine["llama.cpp"])}
            if "luodi" in by_engine:
                ours = {"tg": entry["tok_s"], "pp": entry["pp_tok_s"]}
                entry["luodi_vs_llama.cpp"] = {m: {lv: ratio(ours[m][lv], v) for lv, v in llama[m].items()}
                                               for m in ("tg", "pp")}
        out[scheme] = entry
    return out


# -- run ----------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    from luodi.paths import luodi_home

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens (tg)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens processed (pp)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--models", default="smollm2",
                        help="smollm2, gemma3, tinyllama (the 1.1B shape), qwen7b (the 7B shape: int4-g32)")
    parser.add_argument("--levels", default=",".join(LEVELS),
                        help="levels to run (llama.cpp runs those it has a build for)")
    parser.add_argument("--schemes", default="int8,int4-g32", help=f"of {', '.join(SCHEMES)}")
    parser.add_argument("--llama-cpp-dir", type=Path, default=luodi_home() / "build",
                        help="where build_llama_cpp_levels.sh put llama-cpp-<level>/")
    args = parser.parse_args()
    for flag, known in (("engines", ENGINES), ("models", MODELS), ("schemes", SCHEMES), ("levels", LEVELS)):
        values = getattr(args, flag).split(",")
        if unknown := [v for v in values if v not in known]:
            parser.error(f"--{flag}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
        setattr(args, flag, values)
    return args


def plan(engines: list[str], levels: list[str]) -> list[tuple[str, str]]:
    """(level, engine) in run order: levels alternating, and engines within a level."""
    return [(lv, e) for lv in levels for e in engines if e == "luodi" or lv in LLAMA_LEVELS]


def run_model(model: str, source: Path, args: argparse.Namespace, bins: dict[str, Path],
              scratch: Path) -> dict:
    schemes, weights = args.schemes, {}
    if model == DIRECT_INT4:
        import qwen7b_shape

        schemes, (gguf_path, luodi_dir) = ["int4-g32"], qwen7b_shape.paths(scratch)
        weights = {"luodi": {"int4-g32": luodi_dir}, "llama.cpp": {"int4-g32": gguf_path}}
    else:
        if "luodi" in args.engines:
            weights["luodi"] = luodi_weights(source, schemes, scratch)
        if "llama.cpp" in args.engines:
            weights["llama.cpp"] = llama_weights(source, schemes, bins["avx2"] / "llama-quantize", scratch)
    samples = {s: {e: {lv: [] for lv in LEVELS} for e in args.engines} for s in schemes}
    read_per_token = {e: {s: decode_bytes(e, s, weights[e][s], source) for s in schemes}
                      for e in args.engines}
    read = read_bandwidth(args.threads)
    for rep in range(args.reps):
        for scheme in schemes:
            for level, engine in plan(args.engines, args.levels):
                path = weights[engine][scheme]
                if engine == "luodi":
                    sample = measure_luodi(level, path, args.threads, args.tokens, args.prompt)
                else:
                    sample = measure_llama(bins[level], path, args.threads, args.tokens, args.prompt)
                # On a shared machine the bandwidth drifts: each run is judged by the probes around it.
                read, before = read_bandwidth(args.threads), read
                sample["read_gb_s"] = round((before + read) / 2, 1)
                sample["decode_bytes"] = read_per_token[engine][scheme]
                samples[scheme][engine][level].append(sample)
                print(json.dumps({"rep": rep, "model": model, "scheme": scheme, "engine": engine,
                                  "level": level, **sample}), flush=True)
    return summarize(samples)


def main() -> None:
    from engine_speed import model_paths

    args = parse_args()
    load = os.getloadavg()[0]  # figures from a loaded machine are not comparable across runs
    bins = llama_binaries(args.llama_cpp_dir, LLAMA_LEVELS) if "llama.cpp" in args.engines else {}
    with tempfile.TemporaryDirectory() as scratch:
        sources = model_paths([m for m in args.models if m != DIRECT_INT4], Path(scratch))
        if DIRECT_INT4 in args.models:
            sources[DIRECT_INT4] = Path(scratch)  # qwen7b_shape writes both engines' files there
        results = {m: run_model(m, source, args, bins, Path(scratch)) for m, source in sources.items()}
    report = {
        "command": " ".join(["python", "benchmarks/isa_speed.py", *sys.argv[1:]]),
        "machine": platform.processor() or platform.machine(), "threads": args.threads, "tokens": args.tokens,
        "prompt": args.prompt, "reps": args.reps, "engines": args.engines, "load_at_start": round(load, 2),
        "llama.cpp_build": "llama-bench per level, benchmarks/build_llama_cpp_levels.sh", "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
