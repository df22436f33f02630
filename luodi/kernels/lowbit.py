"""INT8, INT4 and BF16 weight linear layers for CPU inference: native x86 and ARM64 kernels, torch fallback.

Owns turning Luodi's stored quantized weights into a kernel-ready packed form (once, at load time)
and computing `y = x @ W.T (+ bias)` from it. It knows nothing of models or of how the weights were
quantized; the stored forms it accepts are

- INT8: `qweight` int8 [N, K], `scales` [N] (per output channel, symmetric): w = q * scale;
- INT4: `qweight` uint8 [N, K/2] (low nibble = even column), `scales` and `mins` fp16
  [N, ceil(K/g)], g in {32, 64, 128}: w = q * scale + min, q in 0..15; or, with per-row steps
  (fp32 [N] each), uint8 scale codes and int8 min codes: scale = code * scale step, and so the min.

Decode is bound by memory bandwidth (every weight byte is read once per token), so the native
kernels (`native/lowbit.cpp`, compiled at first use into `$LUODI_HOME/build`) stream a tiled
layout once and do the arithmetic in int8: each activation row is quantized in blocks of 32 with
one fp32 scale per block (ggml's Q8_0, `quantize_row_q8_0`), and products are summed in int32 with
`_mm512_dpbusd_epi32`. Packed layouts (16 output rows per tile; N padded to 16, K to 32 or g):
INT8 `[N/16][K/4][16][4]` bytes holding q + 128; INT4 per tile and group `[g/8][16][4]` bytes
(low nibble = column k, high = k + 4 within each run of 8 columns) then 16 fp16 scales and 16 fp16
mins, so a tile is one sequential read. INT4 with 8-bit codes: the tile starts with its 16 fp32
scale steps and 16 fp32 min steps, and each group ends in 16 uint8 scale codes and 16 int8 min
codes (g = 32: 288 bytes a group instead of 320, 4.5 bits a weight instead of 5).

Accuracy. Only x is rounded; the weights are used exactly as stored, and the sums of x that
multiply weight terms (the INT8 +128 offset, the INT4 min) are sums of the rounded x, so each
output is exactly x_rounded @ W.T up to fp32 summation (ggml does the same). Rounding x to
d_b * q with d_b = max|x_b| / 127 moves each element by at most d_b / 2, so

    |y - x @ W.T| <= sum_b (d_b / 2) * sum_{k in b} |W[n, k]|        (`activation_error_bound`)

plus fp32 summation error and the output's own rounding for bf16/fp16 x. Measured on SmolLM2
(benchmarks/README.md, "Accuracy of rounding the activations"), the activation rounding is about
the size of rounding the output to bf16 on average, larger at the worst outputs (blocks holding
an outlier channel leave the other elements few levels), and several times smaller than what INT4
weight rounding itself costs.

INT8 goes further: it also rounds the residual x - d_b * q to d_b / 254 steps and multiplies it by
the same weights (a second VNNI product per weight vector loaded, free while decode waits on
memory), so its bound is the one above / 254, which lowered INT8's perplexity change below the
torch path's. W8A8 keeps one per-row rounding, as SmoothQuant defines it.

Speed: the kernels reach 75-95 % of a plain streaming read at decode (benchmarks/README.md, "Speed
against the memory wall", from `benchmarks/lowbit_kernels.py`), against torch's int8pack/int4pack
kernels' ~50 %; on small layers a call's ~2 us fixed cost is a tenth of its time.

BF16 weights (`prepack_bf16`, used by `luodi.kernels.linear` for float models) are tiled the same
way, `[N'/16][K'/2][16][2]` bf16 (N padded to 32, K to 32), and multiplied with `_mm512_dpbf16_ps`
on bf16 x (other dtypes are rounded to bf16 first), summing in fp32. Up to 16 rows each tile is
streamed once per 8 rows; larger batches use a register-blocked kernel (2 tiles x 12 rows). It
beats oneDNN's prepacked bf16 linear at decode, where oneDNN's per-call dispatch is a fifth of a
small layer's time, and loses a little at long prompt batches (benchmarks/README.md, "BF16 kernel
against oneDNN"): prompt processing gives that up to keep one packed copy of the weights, not two.

Batch invariance. INT8/INT4 outputs are summed in an order fixed by K alone (blocks front to back in
one fp32 chain, then the bias) whatever the number of rows, a row's position or the thread split
(threads split output tiles, never K). BF16 decode can split K over 1-4 chains by row count, which
makes a row's sum depend on its batch; batch-invariant mode (the default; `set_batch_invariant`,
with `luodi.kernels.fused.set_batch_invariant`, or LUODI_BATCH_INVARIANT=0 at load to turn it off)
makes decode sum in the prompt kernel's single chain, getting its parallel chains from 4 tiles
instead, so a request's logits are the same alone and batched (tests/engine/test_batch_invariance.py).
It is the default because it costs under 5 % of prompt speed and decode is even faster in the
tile-parallel order (benchmarks/README.md, "Cost of batch invariance").
Up to `NATIVE_MAX_ROWS` rows: beyond, quantized layers switch to GEMMs with their own order.

Instruction-set levels (`luodi.kernels.isa`: LUODI_CPU_ISA=avx2|avx512|avx512vnni|avx512bf16|neon|generic,
default the best the CPU flags cover). Three x86 builds serve the INT8/INT4 layers: `native/lowbit.cpp`
(AVX-512 VNNI + BF16, compiled -march=native) at avx512bf16; the same source with fixed AVX-512
VNNI flags and without its BF16 kernel at avx512vnni (Cascade Lake, Ice Lake: the same INT8/INT4
code, so the same outputs bit for bit); and `native/lowbit_avx2.cpp` (-mavx2 -mfma -mf16c, so a
real AVX2 binary) at avx2 and avx512 (Skylake-SP has no VNNI dot). A level runs the best build at
or below it that compiles. The AVX2 build is a separate source rather than lowbit.cpp
compiled twice under #if: every inner loop differs (8 lanes instead of 16, no mask registers, no
u8 x s8 dot), so shared text would be little beyond the dispatch, and two readable files beat one
file of alternating branches. It reads the same packed layouts, so prepacking stays one code path:
a 64-byte run of a tile (16 rows x 4 bytes) is two ymm halves of 8 rows, handled one after the
other (the second from cache). Its numerics are the same: x rounded per block of 32 (in two terms
for weight-only INT8), int32 block sums, one fp32 chain per output in K order, so it is batch
invariant in the same way; it differs from the AVX-512 build only in fp32 rounding (weight-only
INT8 multiplies the two terms as one int16, 254 q + fine, through `_mm256_madd_epi16` on widened
weights, measured faster than two `_mm256_maddubs_epi16` products). AVX2 has no bf16 dot, so there
is no native BF16 kernel below avx512bf16 (`bf16_available()`): float layers use oneDNN. The avx2
level decoded about a third as fast as avx512bf16 and an order of magnitude faster than generic
(benchmarks/README.md, "Instruction-set levels"), mostly for reasons outside these kernels: the
fused ops and the native layer stack were then AVX-512 only (both now have an avx2 path:
`luodi.kernels.fused`, `luodi.models.native_stack`; not yet re-measured). Generic on an AVX2 CPU is
slower still than torch's int kernels suggest: without oneDNN bf16 the quantized layers dequantize
every weight per call.

ARM64. `native/lowbit_neon.cpp` (-march=armv8.2-a+dotprod) serves the neon level: AArch64 CPUs with
the dot-product extension (`asimddp`: Graviton 2+, Ampere Altra, Apple M1+), the INT8 (weight-only
and W8A8) and INT4 (fp16 and coded grids) layers; BF16 and the fused ops stay on torch there. Its
kernels (`native/lowbit_neon.h`, torch-free) read the same packed layouts and repeat the AVX2
build's steps: x rounded per block of 32 (two terms for weight-only INT8), `vdotq_s32` (s8 x s8:
INT8 q + 128 turned back into signed q, INT4 codes as non-negative s8) into int32 block sums, one
fp32 chain per output in K order with the same fused multiply-adds; so it is batch invariant the
same way and its outputs equal the AVX2 build's bit for bit. A q register holds 4 output rows, so a
tile is 4 quads, swept 4, 2 or 1 at a time as M leaves registers free. Where the CPU has i8mm
(`vmmlaq_s32`: Graviton 3+, Apple M2+; detected at run time), passes of an even number of rows form
the same integer block sums by 2 x 2 matrix products, so those outputs are the same bit for bit. Verified for correctness
only: no aarch64 torch exists where Luodi is developed, so `tests/kernels/neon` cross-compiles the
kernels into a small harness (`aarch64-linux-gnu-g++ -static`), runs it under `qemu-aarch64` on
weights packed by `prepack_int8` / `prepack_int4`, emulating a Cortex-A76 (dot product, no i8mm)
and qemu's "max" CPU (i8mm), and holds it to the x86 tests' bounds and to the AVX2 build's outputs;
the thin torch binding is only compiled there (for aarch64, against torch's headers). Its speed on
real ARM hardware is unmeasured: emulation says nothing about it.

At the generic level, or where no build compiles (`native_available()` False; the reason is logged
once, returned by `native_unavailable_reason()` and shown in the startup report of kernel paths,
`luodi.kernels.report`), prepacking produces torch's own forms instead,
for `torch._weight_int8pack_mm` and `torch.ops.aten._weight_int4pack_mm_for_cpu` (fast only for
bf16 x). They keep x unrounded and round the scales to bf16.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from luodi.errors import InvalidParameterError, ModelFormatError
from luodi.kernels import isa, native_build
from luodi.kernels.native_build import NativeExtension

log = logging.getLogger(__name__)

EXTENSION = NativeExtension(
    "luodi_lowbit", "lowbit.cpp", "low-bit kernels",
    required_cpu_flags=("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"),
)
# The same source for AVX-512 VNNI CPUs without BF16 (Cascade Lake, Ice Lake): fixed flags, no
# -march=native, so its BF16 kernel is left out (`bf16_available()` is False there).
VNNI_EXTENSION = NativeExtension(
    "luodi_lowbit_vnni", "lowbit.cpp", "AVX-512 VNNI low-bit kernels", required_cpu_flags=isa.LEVEL_FLAGS["avx512vnni"],
    cflags=("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c",
            "-fopenmp"),
)
# A real AVX2 binary (no -march=native): its build must run on any AVX2 CPU, and here it is the same
# code a Haswell or Zen 2 runs.
AVX2_EXTENSION = NativeExtension(
    "luodi_lowbit_avx2", "lowbit_avx2.cpp", "AVX2 low-bit kernels", required_cpu_flags=isa.LEVEL_FLAGS["avx2"],
    cflags=("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"),
)
# AArch64 with the dot-product extension; a fixed -march, like the AVX2 build, so it is the code every
# such CPU runs (and the code the emulated tests check: tests/kernels/neon).
NEON_EXTENSION = NativeExtension(
    "luodi_lowbit_neon", "lowbit_neon.cpp", "NEON low-bit kernels", required_cpu_flags=isa.LEVEL_FLAGS["neon"],
    cflags=("-O3", "-march=armv8.2-a+dotprod", "-fopenmp"), architectures=native_build.AARCH64,
)
# Each build and the level it serves, best first: a CPU runs the best that loads at or below its level
# (`isa.cpu_isa()`; the AVX-512 build needs its VNNI and BF16, so plain AVX-512 runs the AVX2 one).
# Only the builds for this machine's architecture are tried.
_BUILDS = (("avx512bf16", EXTENSION), ("avx512vnni", VNNI_EXTENSION), ("avx2", AVX2_EXTENSION),
           ("neon", NEON_EXTENSION))
EXTENSIONS = tuple(extension for _, extension in _BUILDS)  # every build, for `luodi kernels --build-all`
GROUP_SIZES = (32, 64, 128)
TILE = 16  # output rows per tile in the native layouts
BLOCK = 32  # activation quantization block
# The native kernels take up to 8 rows per pass over the weights (more rows: more passes, the
# weights then come from cache). Against every torch path for the same weights they were fastest
# for all M measured, up to 1024 (benchmarks/README.md, "Speed against the memory wall"), so a
# prompt batch needs no other path up to NATIVE_MAX_ROWS; beyond it nothing was measured.
NATIVE_MAX_ROWS = 1024
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_module: Any = None  # the loaded extension, once `native_available()` has found it
_level = "generic"  # the level of `_module`'s build


# Batch-invariant mode (`set_batch_invariant`): on by default; LUODI_BATCH_INVARIANT=0 turns it off at load.
_batch_invariant = os.environ.get("LUODI_BATCH_INVARIANT", "1") != "0"


@functools.cache
def _native_or_reason() -> tuple[Any, str]:
    global _module, _level
    reasons = []
    builds = [(level, extension) for level, extension in _BUILDS if extension.supports_machine()]
    if not builds:
        reasons.append(f"no build for CPU architecture {platform.machine()}")
    for level, extension in builds:
        _module, reason = extension.load()  # refuses a build above the level in force
        if _module is not None:
            _level = level
            if level == "avx512bf16":
                _module.set_batch_invariant(_batch_invariant)
            return _module, ""
        reasons.append(f"{extension.what}: {reason}")
    _level = "generic"
    return None, "; ".join(reasons)


def native_level() -> str:
    """The instruction-set level of the low-bit kernels in use ('generic': torch's)."""
    return _level if native_available() else "generic"


def bf16_available() -> bool:
    """Whether the native BF16 kernel exists here: the AVX-512 BF16 build only."""
    return native_available() and _level == "avx512bf16"


def set_batch_invariant(on: bool) -> None:
    """Sum every BF16 output in one order whatever the batch (see the module docstring). Process-wide."""
    global _batch_invariant
    _batch_invariant = on
    if bf16_available():
        _module.set_batch_invariant(on)


def native_available() -> bool:
    """Whether the native kernels can run here (compiles them on first call)."""
    module, reason = _native_or_reason()
    if module is None:
        _log_once(reason)
    else:
        _log_level(_level)
    return module is not None


def native_unavailable_reason() -> str:
    """Why `native_available()` is False ('' when it is True)."""
    return _native_or_reason()[1]


def has_native_api() -> bool:
    """Whether the build in use offers the kernel table (`native_api`): the x86 builds do; the AVX2
    and VNNI ones' have no bf16_linear (see `bf16_available`)."""
    return native_available() and _level in ("avx512bf16", "avx512vnni", "avx2")


def native_api() -> int:
    """The address of the native kernels' table (`native/kernel_api.h`), for the layer stack.
    Needs `has_native_api()`."""
    return _module.api()


@functools.cache
def _log_once(reason: str) -> None:
    log.warning("native low-bit kernels unavailable (%s); using torch's int8/int4 kernels", reason)


@functools.cache
def _log_level(level: str) -> None:
    log.info("low-bit kernels: %s build", level)


# -- packed forms ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PackedInt8:
    """An INT8 weight ready for `int8_linear`: the native tiled layout, or torch's int8pack form."""

    weight: torch.Tensor  # native: uint8 [N'/16 * K'/4 * 64]; torch: int8 [N, K']  (K' = K rounded up to 32)
    scales: torch.Tensor  # float32 [N'] (native; N' = N rounded up to 16) or [N]
    out_features: int
    in_features: int
    padded_in_features: int
    is_native: bool


@dataclass(frozen=True, slots=True)
class PackedInt4:
    """An INT4 weight ready for `int4_linear`: the native tiled layout, or torch's int4pack form."""

    weight: torch.Tensor  # native: uint8 [N/16, G, 8g + 64] or, coded, [N/16, 128 + G (8g + 32)];
    # torch: its int4pack [N', K'/2]
    scale_zeros: torch.Tensor | None  # torch only: bf16 [G, N', 2], zero = min + 8 * scale
    out_features: int
    in_features: int
    padded_in_features: int  # G * g
    group_size: int
    is_native: bool
    coded: bool = False  # native: the tile layout with 8-bit scale and min codes


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def prepack_int8(qweight: torch.Tensor, scales: torch.Tensor) -> PackedInt8:
    """Pack an INT8 weight (int8 [N, K], scales [N]) for `int8_linear`."""
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise ModelFormatError(
            f"INT8 qweight must be a 2-D int8 tensor [N, K], got {qweight.dtype} {tuple(qweight.shape)}; "
            "quantize the weight per output channel first"
        )
    n, k = qweight.shape
    if scales.numel() != n or not scales.is_floating_point():
        raise ModelFormatError(
            f"INT8 scales must be {n} floats (one per output row), got {scales.dtype} {tuple(scales.shape)}"
        )
    kp = _round_up(k, BLOCK)  # torch's int8pack also needs K % 32 == 0 (it crashes otherwise)
    scales = scales.detach().reshape(n).float()
    if not native_available():
        return PackedInt8(F.pad(qweight, (0, kp - k)).contiguous(), scales.contiguous(), n, k, kp, False)
    np_ = _round_up(n, TILE)
    offset = F.pad(qweight, (0, kp - k, 0, np_ - n)).view(torch.uint8) ^ 0x80  # q + 128, [N', K']
    tiles = offset.view(np_ // TILE, TILE, kp // 4, 4).permute(0, 2, 1, 3)  # [N'/16, K'/4, 16, 4]
    return PackedInt8(tiles.contiguous().view(-1), F.pad(scales, (0, np_ - n)).contiguous(), n, k, kp, True)


def _check_int4(qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int,
                steps: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    if group_size not in GROUP_SIZES:
        raise ModelFormatError(f"INT4 group size {group_size} is not supported; use one of {GROUP_SIZES}")
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ModelFormatError(
            f"INT4 qweight must be a 2-D uint8 tensor [N, K/2] of packed nibbles, got {qweight.dtype} "
            f"{tuple(qweight.shape)}"
        )
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    groups = -(-k // group_size)
    if steps is None:
        kinds = (("scales", "floats", None), ("mins", "floats", None))
    else:
        kinds = (("scale codes", "uint8", torch.uint8), ("min codes", "int8", torch.int8))
    for (name, kind, dtype), t in zip(kinds, (scales, mins), strict=True):
        fits = t.is_floating_point() if dtype is None else t.dtype == dtype
        if tuple(t.shape) != (n, groups) or not fits:
            raise ModelFormatError(
                f"INT4 {name} must be {kind} [{n}, {groups}] (N, ceil(K/{group_size})), got {t.dtype} "
                f"{tuple(t.shape)}"
            )
    if steps is not None and any(tuple(s.shape) != (n,) for s in steps):
        raise ModelFormatError(f"INT4 scale and min steps must be {n} floats each (one per output row)")


def unpack_nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> uint8 codes [N, K]; the low nibble is the even column."""
    return torch.stack([qweight & 0x0F, qweight >> 4], dim=-1).view(qweight.shape[0], -1)


def prepack_int4(
    qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int,
    steps: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PackedInt4:
    """Pack an INT4 weight: nibbles uint8 [N, K/2], and per group fp16 scales and mins [N, K/g]
    or, with `steps` (fp32 scale steps and min steps [N]), their uint8 / int8 codes."""
    _check_int4(qweight, scales, mins, group_size, steps)
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    kp, np_ = scales.shape[1] * group_size, _round_up(n, TILE)
    codes = F.pad(unpack_nibbles(qweight.detach()), (0, kp - k, 0, np_ - n))  # [N', K']
    if not native_available():
        if steps is not None:  # as the native kernel decodes them: code * step in fp32
            scales, mins = (c.float() * step.float()[:, None] for c, step in zip((scales, mins), steps, strict=True))
        scales, mins = (F.pad(t.detach().float(), (0, 0, 0, np_ - n)) for t in (scales, mins))  # [N', G]
        weight, scale_zeros = _torch_int4_form(codes, scales, mins)
        return PackedInt4(weight, scale_zeros, n, k, kp, group_size, False)
    if steps is None:
        scales, mins = (F.pad(t.detach().half(), (0, 0, 0, np_ - n)) for t in (scales, mins))  # [N', G]
        return PackedInt4(_native_int4_layout(codes, scales, mins, group_size), None, n, k, kp, group_size, True)
    scales, mins = (F.pad(t.detach(), (0, 0, 0, np_ - n)) for t in (scales, mins))  # [N', G]
    step_pair = [F.pad(t.detach().float(), (0, np_ - n), value=1.0) for t in steps]  # [N'] each
    weight = _native_int4_layout(codes, scales, mins, group_size, step_pair)
    return PackedInt4(weight, None, n, k, kp, group_size, True, coded=True)


def _native_int4_layout(
    codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, g: int,
    steps: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """codes uint8 [N', K'] and per group scales / mins [N', G] (fp16, or 8-bit codes with fp32
    `steps` [N'] each) -> uint8 [N'/16, tile bytes] (module docstring)."""
    np_, kp = codes.shape
    tiles, groups = np_ // TILE, kp // g
    runs = codes.view(np_, groups, g // 8, 2, 4)  # runs of 8 columns: k..k+3, then k+4..k+7
    nibbles = runs[:, :, :, 0] | (runs[:, :, :, 1] << 4)  # [N', G, g/8, 4]
    nibbles = nibbles.view(tiles, TILE, groups, g // 8, 4).permute(0, 2, 3, 1, 4)  # [N'/16, G, g/8, 16, 4]

    def per_tile(t: torch.Tensor) -> torch.Tensor:  # [N', G] -> bytes [N'/16, G, 16 * itemsize]
        return t.view(tiles, TILE, groups).transpose(1, 2).contiguous().view(torch.uint8)

    grouped = torch.cat([nibbles.reshape(tiles, groups, 8 * g), per_tile(scales), per_tile(mins)], dim=-1)
    if steps is None:
        return grouped
    header = torch.cat([t.view(tiles, TILE).view(torch.uint8) for t in steps], dim=-1)  # [N'/16, 128]
    return torch.cat([header, grouped.view(tiles, -1)], dim=-1)


def _torch_int4_form(
    codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's int4pack weight and bf16 (scale, zero) [G, N', 2]; torch computes (q - 8) * scale + zero."""
    zeros = mins.float() + 8 * scales.float()
    scale_zeros = torch.stack([scales.float().T, zeros.T], dim=-1).to(torch.bfloat16).contiguous()
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1), scale_zeros


# -- the linear layers ----------------------------------------------------------------------------
# The native calls check and reshape x in C++: on a 2-core machine the same checks in Python cost
# more than the kernel itself for a small decode matmul (~8 us of ~15).
def int8_linear(x: torch.Tensor, packed: PackedInt8, bias: torch.Tensor | None = None, *,
                per_row: bool = False) -> torch.Tensor:
    """x [..., K] (fp32/bf16/fp16) @ W.T + bias -> [..., N] in x's dtype (an fp32 bias is fastest).

    The native kernel rounds x to int8 per 32 columns, or with `per_row` per row (SmoothQuant's
    per-token scale, `luodi.quant.w8a8`); the torch fallback keeps x unrounded.
    """
    if not packed.is_native:
        return _torch_int8_linear(x, packed, bias)
    try:
        return _module.int8_linear(x, packed.weight, packed.scales, bias, packed.out_features,
                                   packed.in_features, packed.padded_in_features, per_row)
    except ValueError as exc:
        raise InvalidParameterError(f"int8_linear: {exc}") from None


def int4_linear(x: torch.Tensor, packed: PackedInt4, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] (fp32/bf16/fp16) @ W.T + bias -> [..., N] in x's dtype (an fp32 bias is fastest)."""
    if not packed.is_native:
        return _torch_int4_linear(x, packed, bias)
    try:
        return _module.int4_linear(x, packed.weight, bias, packed.out_features, packed.in_features,
                                   packed.padded_in_features, packed.group_size, packed.coded)
    except ValueError as exc:
        raise InvalidParameterError(f"int4_linear: {exc}") from None


def _flatten_input(x: torch.Tensor, in_features: int) -> torch.Tensor:
    if x.shape[-1] != in_features:
        raise InvalidParameterError(f"input has {x.shape[-1]} features, the weight expects {in_features}")
    if x.dtype not in INPUT_DTYPES:
        raise InvalidParameterError(f"input dtype {x.dtype} is not supported; use one of {INPUT_DTYPES}")
    return x.reshape(-1, in_features)  # [M, K]


def _torch_int8_linear(x: torch.Tensor, packed: PackedInt8, bias: torch.Tensor | None) -> torch.Tensor:
    x2 = F.pad(_flatten_input(x, packed.in_features), (0, packed.padded_in_features - packed.in_features))
    y = torch._weight_int8pack_mm(x2, packed.weight, packed.scales.to(x.dtype))
    y = y if bias is None else y + bias.to(y.dtype)
    return y.view(*x.shape[:-1], packed.out_features)


def _torch_int4_linear(x: torch.Tensor, packed: PackedInt4, bias: torch.Tensor | None) -> torch.Tensor:
    assert packed.scale_zeros is not None  # built together with the torch form
    x2 = F.pad(_flatten_input(x, packed.in_features), (0, packed.padded_in_features - packed.in_features))
    scale_zeros = packed.scale_zeros.to(x.dtype)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed.weight, packed.group_size, scale_zeros)
    y = y[:, : packed.out_features]
    y = y if bias is None else y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], packed.out_features)


# -- BF16 ---------------------------------------------------------------------------------------------
BF16_ROW_PADDING = 2 * TILE  # the prompt kernel works on blocks of two tiles


@dataclass(frozen=True, slots=True)
class PackedBf16:
    """A bf16 weight in the native tiled layout (module docstring), for `bf16_linear`."""

    weight: torch.Tensor  # uint8 [N'/16 * K'/2 * 64]
    out_features: int
    in_features: int
    padded_in_features: int


def prepack_bf16(weight: torch.Tensor) -> PackedBf16:
    """Tile a [N, K] weight (any float dtype; rounded to bf16). Needs `bf16_available()`."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ModelFormatError(f"a bf16 weight must be a 2-D float tensor, got {weight.dtype} {list(weight.shape)}")
    n, k = weight.shape
    np_, kp = _round_up(n, BF16_ROW_PADDING), _round_up(k, BLOCK)
    w = weight.detach().to(torch.bfloat16)  # no copy when it is bf16 already
    if (np_, kp) != (n, k):
        w = F.pad(w, (0, kp - k, 0, np_ - n))
    tiled = w.view(np_ // TILE, TILE, kp // 2, 2).permute(0, 2, 1, 3).contiguous()  # [N'/16, K'/2, 16, 2]
    return PackedBf16(tiled.view(torch.uint8).flatten(), n, k, kp)


def bf16_linear(x: torch.Tensor, packed: PackedBf16, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ W.T + bias -> [..., N] in x's dtype (bias: fp32 is fastest); native kernels only."""
    try:
        return _module.bf16_linear(x, packed.weight, bias, packed.out_features, packed.in_features,
                                   packed.padded_in_features)
    except ValueError as exc:
        raise InvalidParameterError(f"bf16_linear: {exc}") from None


# -- numerics helpers shared with the tests -------------------------------------------------------
def activation_error_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Worst-case |y - x @ W.T| [M, N] from rounding x to int8 per 32-column block (see docstring)."""
    m, k = x.shape
    kp = _round_up(k, BLOCK)
    step = F.pad(x.float().abs(), (0, kp - k)).view(m, -1, BLOCK).amax(-1) / 127  # [M, K'/32]
    w_abs = F.pad(weight.float().abs(), (0, kp - k)).view(weight.shape[0], -1, BLOCK).sum(-1)  # [N, K'/32]
    return (step / 2) @ w_abs.T
