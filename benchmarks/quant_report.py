"""Quantization report: size, accuracy and speed of each scheme, side by side with llama.cpp.

Per model: Luodi's bf16 (unquantized saved format), int8, int4 (g32) and SmoothQuant W8A8 (auto
alpha and fixed α = 0.5); llama.cpp's Q8_0 and Q4_0 made from the same source file with
llama.cpp's own quantizer. For each: file size, perplexity per byte on the bundled held-out text
and its change vs bf16, greedy agreement with bf16, pp512 / tg128 tok/s and peak RSS (a fresh
process per measurement, engines alternating A B C A B C, medians), and the memory-bandwidth limit
of token generation (weight bytes per token ÷ read bandwidth). The read bandwidth of a shared
machine drifts within a run, so a probe runs before and after every engine run and each run's
tg128 is set against the mean of its own two probes; the fraction reported is the median of those.

    python benchmarks/quant_report.py [--models smollm2,gemma3,tinyllama] [--reps 2] [--threads 2]

SmolLM2 and gemma3-270m ship as quantized GGUFs: their "float" model is that file dequantized.
SmolLM2's layers are Q4_1 (groups of 32 on a 4-bit grid, which int4 g32 can represent almost
exactly) and its embedding Q8_0; gemma3-270m's "Q4_K_M" keeps most weights finer — q/k/gate/up
Q5_0, the embedding and half of v Q8_0, half of down Q6_K, o and the other half of down Q4_K — so
int4 there really drops bits. The
TinyLlama-1.1B shape has random weights: speed only. Writes benchmarks/results/quant_report.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from engine_speed import in_subprocess, model_paths, peak_rss_mb, run_llamacpp, run_luodi

RESULTS = Path(__file__).resolve().parent / "results" / "quant_report.json"
SCHEMES = {  # name -> QuantizeOptions fields
    "bf16": {"scheme": "none"},
    "int8": {"scheme": "int8"},
    "int4-g32": {"scheme": "int4", "group_size": 32},
    "w8a8-auto": {"scheme": "w8a8", "alpha": "auto"},
    "w8a8-0.5": {"scheme": "w8a8", "alpha": 0.5},
}
LLAMA_CPP_TYPES = {"Q8_0": 7, "Q4_0": 2}  # llama_ftype values
PEERS = {"int8": "Q8_0", "int4-g32": "Q4_0", "w8a8-auto": "Q8_0"}
SPEED_ONLY = {"tinyllama"}
# Random weights have no accuracy to keep, and GPTQ changes no byte of the stored layout (so no
# speed): the speed-only model skips its ~10 minutes of fp32 calibration on a 1.1B model.
SPEED_ONLY_OPTIONS = {"method": "rtn"}


# -- making the models ----------------------------------------------------------------------------
def _quantize_child(source: str, options: dict, out: str, queue: mp.Queue) -> None:
    from luodi.quant_tools.quantize import QuantizeOptions, quantize_model_dir

    result = quantize_model_dir(source, QuantizeOptions(**options), Path(out))
    queue.put({"seconds": round(result.seconds, 1), "bytes": result.bytes_written,
               "choices": result.choices})


def scheme_options(scheme: str, speed_only: bool) -> dict:
    """QuantizeOptions fields for the scheme (int4 of a speed-only model: round-to-nearest)."""
    options = dict(SCHEMES[scheme])
    if speed_only and options["scheme"] == "int4":
        options.update(SPEED_ONLY_OPTIONS)
    return options


def _described(options: dict) -> dict:
    """The options in full, as `luodi quantize` records them (defaults included)."""
    from luodi.quant_tools.quantize import QuantizeOptions

    return QuantizeOptions(**options).describe()


def _quantizer_digest() -> str:
    """A hash of the quantizer's source: a model made by other code is made again."""
    import luodi.quant
    import luodi.quant_tools

    sources = sorted(path for package in (luodi.quant, luodi.quant_tools)
                     for path in Path(package.__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]


def luodi_model(source: Path, options: dict, suffix: str, scratch: Path) -> tuple[Path, dict]:
    """The model dir made with `options`, reused only if it was made with exactly those by the same
    quantizer code."""
    out = scratch / f"{source.stem}-{suffix}"
    info_file = out / "bench-info.json"
    made_by = {"options": _described(options), "quantizer": _quantizer_digest()}
    if info_file.exists():
        info = json.loads(info_file.read_text())
        if all(info.get(key) == value for key, value in made_by.items()):
            return out, info
    info = in_subprocess(_quantize_child, str(source), options, str(out))
    info.update(made_by)
    info_file.write_text(json.dumps(info))
    return out, info


def llamacpp_model(source: Path, kind: str, scratch: Path) -> Path:
    import llama_cpp

    out = scratch / f"{source.stem}-{kind}.gguf"
    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = LLAMA_CPP_TYPES[kind], True, 2
        if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {source} to {kind}")
    return out


# -- accuracy ---------------------------------------------------------------------------------------
def _accuracy_child(float_dir: str, dirs: dict[str, str], queue: mp.Queue) -> None:
    import torch

    from luodi.models.loader import load_model
    from luodi.quant_tools.evaluate import greedy_agreement, perplexity_per_byte
    from luodi.quant_tools.texts import heldout_text

    torch.set_num_threads(2)
    text = heldout_text()
    reference = load_model(float_dir, device="cpu", dtype="bfloat16")
    base = perplexity_per_byte(reference.model, reference.tokenizer, text)
    report = {"bf16": {"ppl_per_byte": base.perplexity_per_byte, "num_bytes": base.num_bytes}}
    for scheme, path in dirs.items():
        model = load_model(path, device="cpu", dtype="bfloat16").model
        ppl = perplexity_per_byte(model, reference.tokenizer, text).perplexity_per_byte
        agreement = greedy_agreement(model, reference.model, reference.tokenizer, text).agreement
        report[scheme] = {"ppl_per_byte": ppl, "delta_ppl_pct": 100 * (ppl / base.perplexity_per_byte - 1),
                          "greedy_agreement": agreement}
        del model
    queue.put(report)


# -- speed ------------------------------------------------------------------------------------------
def _speed_child(engine: str, path: str, threads: int, queue: mp.Queue) -> None:
    try:
        result = run_llamacpp(path, threads) if engine.startswith("llama.cpp") else run_luodi(path, threads)
        result["peak_rss_mb"] = peak_rss_mb()
        queue.put(result)
    except Exception as exc:  # report, don't hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _bandwidth_child(threads: int, queue: mp.Queue, seconds: float = 2.0) -> None:
    """Sustained read bandwidth: summing a 1 GiB tensor that no cache holds, over and over for
    `seconds`, total bytes ÷ total time. A mean over seconds, as tg128 is, not STREAM's best of a
    few passes: on a shared machine single 25 ms passes range 35–75 GB/s, and the best of them
    stands for a burst no decode of several seconds sees."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(2**28, dtype=torch.float32)
    data.sum()  # pages touched, threads up
    passes, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        data.sum()
        passes += 1
    queue.put(passes * data.numel() * 4 / (time.perf_counter() - start) / 1e9)


DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I8": 1, "U8": 1, "I32": 4}


def bytes_per_token(path: Path, gguf_as_bf16: bool = False) -> int:
    """Weight bytes one decode step reads: every tensor but an untied embedding table (only rows).
    `gguf_as_bf16`: a GGUF's tensors counted at two bytes a weight, as an engine that loads it to
    bf16 reads them."""
    if path.suffix == ".gguf":
        from luodi.loading.gguf import GGUFFile

        tensors = GGUFFile(path).tensors
        tied = "output.weight" not in tensors
        return sum(2 * _numel(list(t.shape)) if gguf_as_bf16 else t.n_bytes
                   for name, t in tensors.items() if tied or name != "token_embd.weight")
    from safetensors import safe_open

    tied = json.loads((path / "config.json").read_text()).get("tie_word_embeddings", False)
    total = 0
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            if tied or not name.startswith("model.embed_tokens"):
                part = f.get_slice(name)
                total += DTYPE_BYTES[part.get_dtype()] * _numel(part.get_shape())
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def measure_speed(paths: dict[str, Path], reps: int, threads: int) -> tuple[dict[str, dict], list[float]]:
    """Median speeds per engine (each with the median of its runs' tg128 ÷ bandwidth limit, see
    `_with_fractions`), and every read-bandwidth probe, in order: one before the first run and one
    after each."""
    samples: dict[str, list[dict]] = {name: [] for name in paths}
    probes = [in_subprocess(_bandwidth_child, threads)]
    for rep in range(reps):
        for name, path in paths.items():  # alternate: drift hits every engine alike
            engine = "llama.cpp" if name.startswith("llama.cpp") else "luodi"
            result = in_subprocess(_speed_child, engine, str(path), threads)
            probes.append(in_subprocess(_bandwidth_child, threads))
            if "error" not in result:
                result["read_bandwidth_gb_s"] = (probes[-2] + probes[-1]) / 2  # the probes around this run
            samples[name].append(result)
            print(json.dumps({"rep": rep, "engine": name, **result}), flush=True)
    summary = {}
    for name, runs in samples.items():
        ok = [_with_fractions(r, paths[name]) for r in runs if "error" not in r]
        summary[name] = ({k: round(statistics.median(r[k] for r in ok), 3) for k in ok[0]} if ok
                         else {"error": runs[-1]["error"]})
    return summary, probes


def _with_fractions(run: dict, path: Path) -> dict:
    """`run` plus its tg128 ÷ the bandwidth limit that its own two probes give."""
    limit = run["read_bandwidth_gb_s"] * 1e9 / bytes_per_token(path)
    return {**run, "tg_limit_tok_s": limit, "tg_fraction_of_limit": run["tg128"] / limit}


def report_model(name: str, source: Path, args: argparse.Namespace, scratch: Path, previous: dict) -> dict:
    schemes = args.schemes.split(",")
    made = {s: luodi_model(source, scheme_options(s, name in SPEED_ONLY), s, scratch) for s in ["bf16", *schemes]}
    ggufs = {kind: llamacpp_model(source, kind, scratch) for kind in LLAMA_CPP_TYPES}
    report: dict = {"bytes": {s: info["bytes"] for s, (_, info) in made.items()},
                    "quantize_seconds": {s: info["seconds"] for s, (_, info) in made.items()},
                    "choices": {s: info["choices"] for s, (_, info) in made.items() if info["choices"]}}
    report["bytes"].update({f"llama.cpp-{k}": p.stat().st_size for k, p in ggufs.items()})
    report["size_vs_bf16"] = {s: round(b / report["bytes"]["bf16"], 3) for s, b in report["bytes"].items()}
    if name not in SPEED_ONLY and not args.skip_accuracy:
        dirs = {s: str(path) for s, (path, _) in made.items() if s != "bf16"}
        report["accuracy"] = in_subprocess(_accuracy_child, str(made["bf16"][0]), dirs)
    elif "accuracy" in previous:  # a speed-only rerun keeps the last measured accuracy, marked as such
        report["accuracy"] = previous["accuracy"]
        report["accuracy_from_earlier_run"] = True
    speed_paths = {f"luodi-{s}": made[s][0] for s in ["bf16", *schemes] if s != "w8a8-0.5"}
    speed_paths.update({f"llama.cpp-{k}": p for k, p in ggufs.items()})
    report["speed"], probes = measure_speed(speed_paths, args.reps, args.threads)
    # On a shared machine single probes swing both ways (seen here: 34 to 75 GB/s in one run), so
    # each run is judged against the probes taken just before and after it, not one run-wide figure.
    report["read_bandwidth_gb_s"] = round(statistics.median(probes), 1)
    report["read_bandwidth_probes_gb_s"] = [round(b, 1) for b in probes]
    report["bandwidth_limit_tg"] = {
        engine: {"limit_tok_s": round(speed["tg_limit_tok_s"], 1), "fraction": round(speed["tg_fraction_of_limit"], 3)}
        for engine, speed in report["speed"].items() if "tg_limit_tok_s" in speed
    }
    report["ratios"] = ratios(report["speed"])
    return report


def ratios(speed: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for scheme, peer in PEERS.items():
        ours, theirs = speed.get(f"luodi-{scheme}", {}), speed.get(f"llama.cpp-{peer}", {})
        shared = [k for k in ("pp128", "pp512", "tg128") if k in ours and k in theirs and theirs[k]]
        if shared:
            out[f"{scheme}_vs_{peer}"] = {k: round(ours[k] / theirs[k], 2) for k in shared}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3,tinyllama")
    parser.add_argument("--schemes", default="int8,int4-g32,w8a8-auto,w8a8-0.5")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true",
                        help="Measure size and speed only; keep the accuracy of the last stored run.")
    parser.add_argument("--scratch", default=str(Path(tempfile.gettempdir()) / "luodi-bench"))
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    report = {"threads": args.threads, "reps": args.reps, "models": {}}
    if RESULTS.exists():
        report["models"] = json.loads(RESULTS.read_text()).get("models", {})
    for name, source in model_paths(args.models.split(","), scratch).items():
        report["models"][name] = report_model(name, source, args, scratch, report["models"].get(name, {}))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({name: report["models"][name]}, indent=2), flush=True)


if __name__ == "__main__":
    main()
