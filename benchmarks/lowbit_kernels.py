"""Low-bit GEMV speed for decode: weight bytes read per second, Luodi's native kernels vs torch's.

Decode on CPU is bound by memory bandwidth, so each kernel is scored in GB/s of weight bytes
(quantized values + scales + mins, as stored) and as a fraction of the machine's read bandwidth,
measured in the same run by a plain streaming read (native; torch's sum is a little slower). Every
kernel rotates through many distinct weights (more than the L3 cache in total), so each weight is
read from DRAM as in a real model.
Kernels alternate (A B C ... A B C ...) and medians are reported, with the best sample beside them.

    python benchmarks/lowbit_kernels.py [--rows 1,4,8] [--reps 9] [--threads 2] [--pool-mb 128]
    python benchmarks/lowbit_kernels.py --clock undisturbed       # on a busy machine
    python benchmarks/lowbit_kernels.py --threads 1 --clock cpu   # per core, on a busy machine
    python benchmarks/lowbit_kernels.py --accuracy smollm2-135m-instruct   # error on a real model

Peers: `torch._weight_int8pack_mm`, `torch.ops.aten._weight_int4pack_mm_for_cpu` (both with bf16
activations, their fast path), oneDNN's prepacked bf16 linear against Luodi's native bf16 kernel, and for
INT8 the prompt-batch path: per-row int8 activations through `torch._int_mm` (W8A8).
Writes benchmarks/results/lowbit_kernels.json (other threads or clock: lowbit_kernels_<T>t_<clock>.json;
--accuracy: lowbit_accuracy.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from luodi.kernels import lowbit

RESULTS = Path(__file__).resolve().parent / "results" / "lowbit_kernels.json"
SHAPES = ((576, 1536), (1536, 576), (2048, 5632), (5632, 2048), (2048, 2048))  # weight [N, K] = [out, in]
GROUP_SIZE = 32
READ_PROBE = "read_bandwidth"

Kernel = Callable[[torch.Tensor, Any], torch.Tensor]


@dataclasses.dataclass
class Pool:
    """A kernel, the distinct weights it rotates through, and the bytes each weight costs to read."""

    run: Kernel
    weights: list[Any]
    nbytes: int

    def samples(self, x: torch.Tensor, clock: str) -> list[float]:
        """GB/s over one pass through the weights: one sample for the pass ("wall": elapsed time,
        "cpu": this thread's CPU time), or one per call that no context switch interrupted
        ("undisturbed": on a busy machine a preempted thread stalls the whole parallel region)."""
        if clock == "undisturbed":
            rates = (self._undisturbed_call(x, w) for w in self.weights)
            return [rate for rate in rates if rate is not None]
        timer = time.thread_time if clock == "cpu" else time.perf_counter
        start = timer()
        for w in self.weights:
            self.run(x, w)
        return [self.nbytes * len(self.weights) / (timer() - start) / 1e9]

    def _undisturbed_call(self, x: torch.Tensor, w: Any) -> float | None:
        before = involuntary_switches()
        start = time.perf_counter()
        self.run(x, w)
        seconds = time.perf_counter() - start
        return self.nbytes / seconds / 1e9 if involuntary_switches() == before else None


def involuntary_switches() -> int:
    """Times any thread of this process was preempted so far (Linux)."""
    total = 0
    for status in Path("/proc/self/task").glob("*/status"):
        try:
            total += int(status.read_text().rsplit("nonvoluntary_ctxt_switches:", 1)[1])
        except (OSError, IndexError):  # a thread that just ended
            continue
    return total


def pool(run: Kernel, weight: Any, nbytes: int, pool_bytes: int) -> Pool:
    """`weight` cloned until the copies hold `pool_bytes` (at least 4 copies)."""
    count = max(4, -(-pool_bytes // nbytes))
    return Pool(run, [_clone(weight) for _ in range(count)], nbytes)


def _clone(weight: Any) -> Any:
    if isinstance(weight, torch.Tensor):
        return weight.clone()
    if isinstance(weight, tuple):
        return tuple(_clone(t) for t in weight)
    fields = {f.name: getattr(weight, f.name) for f in dataclasses.fields(weight)}
    return dataclasses.replace(weight, **{k: _clone(v) for k, v in fields.items() if torch.is_tensor(v)})


def make_pools(n: int, k: int, pool_bytes: int) -> dict[str, Pool]:
    """Random weights (speed does not depend on the values) in each kernel's form."""
    gen = torch.Generator().manual_seed(0)
    q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    s8 = torch.rand(n, generator=gen) * 0.01 + 1e-3
    q4 = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    s4 = (torch.rand(n, k // GROUP_SIZE, generator=gen) * 0.01).half()
    m4 = (torch.randn(n, k // GROUP_SIZE, generator=gen) * 0.01).half()
    int8_bytes = n * k + 4 * n
    int4_bytes = n * k // 2 + 4 * n * (k // GROUP_SIZE)
    # torch's int4 dequantizes as (q - 8) * scale + zero, so zero = min + 8 * scale.
    scale_zero = torch.stack([s4.float().T, (m4.float() + 8 * s4.float()).T], -1).to(torch.bfloat16)
    torch_q4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
    w16 = torch.randn(n, k, generator=gen).bfloat16()
    onednn = torch.ops.mkldnn._reorder_linear_weight(w16, 1)
    pools = {
        "torch_int8pack": pool(lambda x, w: torch._weight_int8pack_mm(x, *w), (q8, s8.bfloat16()),
                               int8_bytes, pool_bytes),
        "torch_int4pack": pool(_int4pack_mm, (torch_q4, scale_zero.contiguous()), int4_bytes, pool_bytes),
        "torch_int_mm_w8a8": pool(_int_mm_w8a8, (q8, s8), int8_bytes, pool_bytes),
        "bf16_onednn": pool(lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
                            onednn, 2 * n * k, pool_bytes),
    }
    if lowbit.native_available():
        nibbles = (q4[:, 0::2] | (q4[:, 1::2] << 4)).to(torch.uint8)  # [N, K/2], low nibble = even column
        p4 = lowbit.prepack_int4(nibbles, s4, m4, GROUP_SIZE)
        # 8-bit scale and min codes on per-row steps (the default of `luodi quantize`)
        codes = (torch.randint(1, 256, s4.shape, generator=gen).to(torch.uint8),
                 torch.randint(-127, 128, m4.shape, generator=gen).to(torch.int8))
        steps = (torch.full((n,), 1e-4), torch.full((n,), 1e-4))
        p4_coded = lowbit.prepack_int4(nibbles, *codes, GROUP_SIZE, steps)
        int4_coded_bytes = n * k // 2 + 2 * n * (k // GROUP_SIZE) + 8 * n
        pools["luodi_int8"] = pool(lowbit.int8_linear, lowbit.prepack_int8(q8, s8), int8_bytes, pool_bytes)
        pools["luodi_int4"] = pool(lowbit.int4_linear, p4, int4_bytes, pool_bytes)
        pools["luodi_int4_coded"] = pool(lowbit.int4_linear, p4_coded, int4_coded_bytes, pool_bytes)
        pools["luodi_bf16"] = pool(lowbit.bf16_linear, lowbit.prepack_bf16(w16), 2 * n * k, pool_bytes)
    return pools


def _int4pack_mm(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, w[0], GROUP_SIZE, w[1])


def _int_mm_w8a8(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The prompt-batch peer for INT8 weights: x quantized per row, int8 x int8 -> int32 GEMM."""
    xf = x.float()
    x_scale = xf.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127  # [M, 1]
    xq = torch.round(xf / x_scale).to(torch.int8)
    return (torch._int_mm(xq, w[0].t()).float() * x_scale * w[1]).to(x.dtype)


STREAM_READ_SOURCE = r"""
#include <ATen/Parallel.h>
#include <immintrin.h>

// Reads every byte once (OR-reduce), split across threads like the kernels, each thread's range as
// 4 interleaved streams: one stream a thread reached ~77 % of that on a 2-core VM (as the low-bit
// kernels did before they streamed several tiles). Hardware prefetch only: for a pure stream it
// beats software prefetch (measured), unlike the kernels that compute per line.
int64_t stream_read(const at::Tensor& t) {
  constexpr int64_t kStreams = 4, kLine = 256;
  const uint8_t* p = t.data_ptr<uint8_t>();
  std::atomic<uint64_t> sink{0};
  at::parallel_for(0, t.numel() / kLine, 128, [&](int64_t begin, int64_t end) {
    const int64_t per_stream = (end - begin) / kStreams;
    __m512i acc[kStreams];
    for (auto& a : acc) a = _mm512_setzero_si512();
    const auto read = [&](__m512i a, int64_t line) {
      const uint8_t* q = p + line * kLine;
      const __m512i lo = _mm512_or_si512(_mm512_loadu_si512(q), _mm512_loadu_si512(q + 64));
      const __m512i hi = _mm512_or_si512(_mm512_loadu_si512(q + 128), _mm512_loadu_si512(q + 192));
      return _mm512_or_si512(a, _mm512_or_si512(lo, hi));
    };
    for (int64_t i = 0; i < per_stream; ++i)
      for (int64_t s = 0; s < kStreams; ++s) acc[s] = read(acc[s], begin + s * per_stream + i);
    for (int64_t line = begin + kStreams * per_stream; line < end; ++line) acc[0] = read(acc[0], line);
    __m512i all = acc[0];
    for (int64_t s = 1; s < kStreams; ++s) all = _mm512_or_si512(all, acc[s]);
    sink |= _mm512_reduce_or_epi64(all);
  });
  return static_cast<int64_t>(sink.load());
}
"""


def read_bandwidth_pool(pool_bytes: int) -> tuple[Pool, str]:
    """Reads of 4 MB slices of a large buffer, and how: a native streaming read (split across threads
    like the kernels) or, if it cannot be built, torch's sum (a little slower).

    Slices keep one call about as long as a kernel's, so "undisturbed" calls are as likely for both."""
    big = torch.ones(max(pool_bytes, 256 << 20) // 4)
    chunk = 4 << 20
    try:
        probe = _stream_read_extension().stream_read
        slices = list(big.view(torch.uint8).split(chunk))
        return Pool(lambda x, w: probe(w), slices, chunk), "native stream read"
    except (RuntimeError, OSError, ImportError) as exc:
        print(f"native read probe unavailable ({type(exc).__name__}); using torch.sum", flush=True)
        return Pool(lambda x, w: w.sum(), list(big.split(chunk // 4)), chunk), "torch.sum"


def sustained_read_gbps(threads: int, seconds: float = 2.0) -> float:
    """The machine's read bandwidth as decode sees it: the native streaming read over a 1 GiB buffer
    (no cache holds it), again and again for `seconds`, total bytes / total time (a mean, as a
    decode of several seconds sees, not a best burst)."""
    torch.set_num_threads(threads)
    probe = _stream_read_extension().stream_read
    data = torch.ones(1 << 30, dtype=torch.uint8)
    probe(data)  # pages touched, threads up
    passes, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        probe(data)
        passes += 1
    return passes * data.numel() / (time.perf_counter() - start) / 1e9


def _stream_read_extension() -> Any:
    from torch.utils import cpp_extension

    from luodi.paths import luodi_home

    build_dir = luodi_home() / "build" / "bench-stream-read"
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load_inline(
        "luodi_bench_stream_read", cpp_sources=STREAM_READ_SOURCE, functions=["stream_read"],
        extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
    )


def measure_shape(
    n: int, k: int, rows: list[int], reps: int, pool_bytes: int, probe: Pool, clock: str
) -> dict:
    pools = {**make_pools(n, k, pool_bytes), READ_PROBE: probe}
    result: dict[str, dict] = {}
    for m in rows:
        x = torch.randn(m, k).bfloat16()
        for p in pools.values():  # warm-up: first touch, thread pool, build
            p.samples(x, "wall")
        samples: dict[str, list[float]] = {name: [] for name in pools}
        for _ in range(reps):
            for name, p in pools.items():
                samples[name] += p.samples(x, clock)
        medians = {name: statistics.median(v) for name, v in samples.items() if v}
        limit = medians.pop(READ_PROBE, None)  # None: every probe call was preempted
        result[f"M={m}"] = {
            "read_bandwidth_gbps": limit and round(limit, 1),
            "gbps": {name: round(v, 1) for name, v in medians.items()},
            "pct_of_read_bandwidth": {n: round(100 * v / limit) for n, v in medians.items()} if limit else {},
            "gbps_best": {name: round(max(v), 1) for name, v in samples.items() if v},
            # Formats read different bytes: compare kernels by time where compute, not reading, bounds them.
            "us_per_call": {name: round(pools[name].nbytes / v / 1e3, 1) for name, v in medians.items()},
            "samples": {name: len(v) for name, v in samples.items()},
        }
        print(json.dumps({"shape": f"{n}x{k}", "M": m, **result[f"M={m}"]}), flush=True)
    return result


def summarize(shapes: dict[str, dict]) -> dict[str, dict[str, int]]:
    """Per M: each kernel's median % of the read bandwidth over the shapes."""
    by_rows: dict[str, dict[str, list[int]]] = {}
    for per_rows in shapes.values():
        for rows, figures in per_rows.items():
            for name, pct in figures["pct_of_read_bandwidth"].items():
                by_rows.setdefault(rows, {}).setdefault(name, []).append(pct)
    return {rows: {name: round(statistics.median(v)) for name, v in per_kernel.items()}
            for rows, per_kernel in by_rows.items()}


# -- accuracy on a real model ---------------------------------------------------------------------
ACCURACY_TEXT = (
    "The quick brown fox jumps over the lazy dog. 人工智能正在改变世界，我们需要理解它的原理。 "
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong walked on its surface "
    "while millions watched."
)


def layer_inputs(spec: str, rows: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, fp32 weight, first `rows` inputs) of every nn.Linear while the model reads a text."""
    from luodi.models.loader import load_model
    from luodi.models.reference import full_logits

    loaded = load_model(spec, device="cpu", dtype="float32", for_inference=False)
    linears = {name: m for name, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear)}
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, name=name: captured.setdefault(name, []).append(args[0]))
        for name, m in linears.items()
    ]
    full_logits(loaded.model, loaded.tokenizer.encode(ACCURACY_TEXT))
    for hook in hooks:
        hook.remove()
    return [
        (name, m.weight.detach().float(), torch.cat(captured[name])[:rows])
        for name, m in linears.items()
    ]


def measure_accuracy(spec: str, rows: int = 8) -> dict:
    """Native kernels vs x @ dequantized(W).T, beside bf16 output rounding and INT4's own weight error."""
    from luodi.quant.weight_only import dequantize_int4, pack_int4, quantize_int4, quantize_int8

    errors: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}

    def record(key: str, name: str, y: torch.Tensor, ref: torch.Tensor) -> None:
        errors.setdefault(key, []).append((name, y.double() - ref, ref))

    with torch.inference_mode():
        for name, w, x in layer_inputs(spec, rows):
            q8, s8 = quantize_int8(w)
            w8, p8 = q8.float() * s8[:, None], lowbit.prepack_int8(q8, s8)
            xb = x.bfloat16()
            ref_bf16_x = xb.double() @ w8.double().T
            record("int8_fp32_x", name, lowbit.int8_linear(x, p8), x.double() @ w8.double().T)
            record("int8_bf16_x", name, lowbit.int8_linear(xb, p8), ref_bf16_x)
            record("bf16_output_rounding_only", name, ref_bf16_x.float().bfloat16(), ref_bf16_x)
            if w.shape[1] % GROUP_SIZE == 0:
                q4, s4, m4 = quantize_int4(w, GROUP_SIZE)
                ref4 = x.double() @ dequantize_int4(q4, s4, m4, GROUP_SIZE).double().T
                p4 = lowbit.prepack_int4(pack_int4(q4), s4, m4, GROUP_SIZE)
                record("int4_fp32_x", name, lowbit.int4_linear(x, p4), ref4)
                record("int4_weight_rounding_itself", name, ref4, x.double() @ w.double().T)
    return {"model": spec, "rows_per_layer": rows, **{key: _error_summary(v) for key, v in errors.items()}}


def _error_summary(layers: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict:
    worst, worst_name = max((float(err.abs().max() / ref.abs().max()), name) for name, err, ref in layers)
    err_sq = sum(float(err.pow(2).sum()) for _, err, _ in layers)
    ref_sq = sum(float(ref.pow(2).sum()) for *_, ref in layers)
    return {
        "layers": len(layers),
        "rms_error_over_rms_y_pct": round(100 * (err_sq / ref_sq) ** 0.5, 3),
        "worst_layer_max_error_over_max_y_pct": round(100 * worst, 3),
        "worst_layer": worst_name,
    }


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,8", help="activation rows M, comma-separated")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool-mb", type=int, default=128, help="distinct weight bytes per kernel (> L3)")
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="NxK,...")
    parser.add_argument("--clock", choices=("wall", "cpu", "undisturbed"), default="wall",
                        help="cpu: this thread's CPU time (--threads 1); undisturbed: only calls no context "
                        "switch interrupted (both immune to preemption by neighbours on a busy machine)")
    parser.add_argument("--accuracy", metavar="MODEL", help="instead: the kernels' error on MODEL's layers")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default: by threads and clock)")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread; use it with --threads 1")
    torch.set_num_threads(args.threads)
    if args.accuracy:
        write(measure_accuracy(args.accuracy), RESULTS.with_name("lowbit_accuracy.json"))
        return
    rows = [int(m) for m in args.rows.split(",")]
    probe, probe_kind = read_bandwidth_pool(args.pool_mb << 20)
    shapes: dict[str, dict] = {}
    with torch.inference_mode():
        for shape in args.shapes.split(","):
            n, k = (int(v) for v in shape.split("x"))
            shapes[shape] = measure_shape(n, k, rows, args.reps, args.pool_mb << 20, probe, args.clock)
    write({
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "clock": args.clock,
        "read_probe": probe_kind,
        "native": {"available": lowbit.native_available(), "reason": lowbit.native_unavailable_reason()},
        "group_size": GROUP_SIZE, "reps": args.reps, "pool_mb": args.pool_mb,
        "median_pct_of_read_bandwidth": summarize(shapes),
        "shapes": shapes,
    }, args.output or (RESULTS if (args.threads, args.clock) == (2, "wall") else
                       RESULTS.with_name(f"lowbit_kernels_{args.threads}t_{args.clock}.json")))


if __name__ == "__main__":
    main()
