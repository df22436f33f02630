"""Weight-only quantization arithmetic: INT8 per output channel, INT4 group-wise, and nibble packing.

Owns the numbers only — pure torch functions on tensors, no modules, no kernels, no files. The
stored forms (what `luodi.quant.linear` saves and the kernels read):

- INT8, symmetric per output channel: `qweight` int8 [N, K] in [-127, 127], `scales` fp32 [N];
  w ≈ q * scale. -128 is never used, so the grid is symmetric around zero (as in LLM.int8's
  absmax quantization, Dettmers et al. 2022, and gpt-fast's `WeightOnlyInt8QuantHandler`).
- INT4, asymmetric round-to-nearest in groups of g consecutive input columns (GPTQ/AWQ-style
  groups; `luodi.quant_tools.gptq` adds GPTQ's error feedback and stores the same form): `q` 0..15
  [N, K], `scales` and `mins` fp16 [N, K/g];
  w ≈ q * scale + min. On disk two nibbles share a byte (`pack_int4`). Each group's grid starts
  at its min and spans its [min, max] in 15, 14, ... or 8 steps, whichever gives the least squared
  error: 15 steps is the finest, but a group whose weights already sit on a coarser uniform grid
  (a GGUF's Q4_K block that uses 11 of its 16 levels, say) is recovered by the grid of its own
  step, where the 15-step grid would move most of its weights by up to half a step. On
  gemma3-270m (a Q4_K_M file: its o_proj and half its down_proj are Q4_K) int4 g32's perplexity
  change went from +14.0 % to +10.9 % (same text and model, in one session).

Every element is quantized against the *stored* scale and min (after their fp16 rounding), and
the fp16 min and scale are rounded outward so that the grid still covers the group's [min, max].
That keeps the round-to-nearest bound |w - ŵ| <= scale / 2 true for what is saved, up to the
float32 arithmetic error derived in tests/quant/test_weight_only.py.

8-bit scale codes (`GridSteps`, the default of `luodi quantize`). Decode reads every weight byte
once per token, and two fp16 numbers per group of 32 are a fifth of INT4 g32's bytes (5.0 bits a
weight, against llama.cpp Q4_0's 4.5). So each group's scale and min can instead sit on a per-row
lattice, scale = scale_step * c (c in 1..255) and min = min_step * c' (c' in -127..127), stored as
one uint8 and one int8 code: 4.5 bits a weight, as in QLoRA's double quantization and llama.cpp's
Q4_K (6-bit codes per 256 columns). The steps come from the row's fp16 grids (largest scale / 255,
largest |min| / 127), and the grid search then runs on the lattice: the grid that covers the
group (min rounded down, scale up) and its neighbours one code away, which may clip the group's
extreme weights a little. Covering grids alone added 1-2 % to the squared error of fp16 grids on
float weights, and gemma3-270m's int4 perplexity change rose from +4.16 % (fp16 grids) to +5.13 %;
with the neighbours the error is 7-8 % below fp16 grids' and the change +4.1 %. Weights that
already sit on a 4-bit grid are another matter: fp16 grids recover a GGUF Q4_1 or Q4_K block
almost exactly, the lattice does not (5-30x the squared error). So `pick_scale_bits` (what `luodi
quantize` does by default) keeps fp16 grids for the layers where the codes cost much.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from luodi.errors import InvalidParameterError

INT8_MAX = 127
INT4_LEVELS = 15  # q in 0..15
GROUP_SIZES = (32, 64, 128)
SCALE_BITS = (16, 8)  # INT4 scales and mins: fp16 values, or 8-bit codes on a per-row lattice
DEFAULT_SCALE_BITS = 8
# `pick_scale_bits`: 8-bit codes unless they add more than this factor to the squared error of fp16
# grids. Float weights measured 1.01-1.02; weights already on a 4-bit grid (GGUF Q4_1, Q4_K
# blocks), which fp16 grids recover almost exactly, 11-30.
CODED_ERROR_TOLERANCE = 1.25
SCALE_CODE_MAX = 255  # scale codes 1..255
MIN_CODE_MAX = 127  # min codes -127..127
_STEP_HEADROOM = 1 + 2**-16  # the largest scale and |min| land just inside the code range


def as_float_matrix(weight: Tensor) -> Tensor:
    """`weight` as an fp32 [N, K] tensor outside autograd; a clear error unless it is 2-D."""
    if weight.dim() != 2:
        raise InvalidParameterError(
            "a weight to quantize must be a 2-D [out_features, in_features] matrix, "
            f"got shape {tuple(weight.shape)}"
        )
    return weight.detach().float()


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric INT8: (qweight int8 [N, K], scales fp32 [N]).

    w ≈ q * scales[:, None].
    """
    w = as_float_matrix(weight)  # [N, K]
    scales = w.abs().amax(dim=1) / INT8_MAX  # [N]
    # An all-zero row (or one so small that amax/127 underflows) gets scale 1: q = 0 is then exact
    # (or off by less than 1/2), and nothing divides by zero.
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    qweight = torch.round(w / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)  # [N, K]
    return qweight, scales


def dequantize_int8(qweight: Tensor, scales: Tensor) -> Tensor:
    """float32 [N, K] = q * scale."""
    return qweight.float() * scales.float()[:, None]


def check_group_size(out_features: int, in_features: int, group_size: int) -> None:
    """Raise `InvalidParameterError` unless `group_size` is allowed and divides the layer's K."""
    if group_size not in GROUP_SIZES:
        raise InvalidParameterError(
            f"INT4 group size {group_size} for a [{out_features}, {in_features}] weight is not one of "
            f"{', '.join(map(str, GROUP_SIZES))}; pick one of those",
            "group_size",
        )
    if in_features % group_size:
        allowed = [str(g) for g in GROUP_SIZES if in_features % g == 0] or ["none (use int8 for this layer)"]
        raise InvalidParameterError(
            f"INT4 group size {group_size} does not divide in_features {in_features} of a "
            f"[{out_features}, {in_features}] weight; group sizes that fit: {', '.join(allowed)}",
            "group_size",
        )


def check_scale_bits(scale_bits: int) -> None:
    if scale_bits not in SCALE_BITS:
        raise InvalidParameterError(
            f"INT4 scale bits {scale_bits!r} is not one of {', '.join(map(str, SCALE_BITS))}", "scale_bits"
        )


# Rows searched at once: ~2 MB of fp32 weights, so a candidate grid's passes over them stay in
# cache (a 5632 x 2048 weight's lattice search: 2.7 s in 8192-row passes, 0.23 s in these).
_INT4_ELEMENTS_PER_PASS = 1 << 19
_INT4_STEP_COUNTS = range(INT4_LEVELS, 7, -1)  # fp16 grids of 15 ... 8 steps across a group's range
# Lattice grids of 15 ... 12 steps, each with its neighbours one code away: once the neighbours
# are tried, fewer steps never won on gemma3-270m's layers or on Gaussian weights.
_LATTICE_STEP_COUNTS = range(INT4_LEVELS, 11, -1)
_CODE_NUDGES = (0, 1, -1)  # the covering code first: ties keep it


class GridSteps(NamedTuple):
    """Per-row lattice of INT4's 8-bit scale codes: scale = scale[n] * code, min = min[n] * code."""

    scale: Tensor  # fp32 [N]
    min: Tensor  # fp32 [N]

    def rows(self, index: Tensor | slice) -> "GridSteps":
        return GridSteps(self.scale[index], self.min[index])

    def encode(self, scales: Tensor, mins: Tensor) -> tuple[Tensor, Tensor]:
        """Lattice values fp32 [N, G] -> (scale codes uint8, min codes int8); exact for lattice values."""
        scale_codes = torch.round(scales.float() / self.scale[:, None]).clamp_(1, SCALE_CODE_MAX)
        min_codes = torch.round(mins.float() / self.min[:, None]).clamp_(-MIN_CODE_MAX, MIN_CODE_MAX)
        return scale_codes.to(torch.uint8), min_codes.to(torch.int8)

    def decode(self, scale_codes: Tensor, min_codes: Tensor) -> tuple[Tensor, Tensor]:
        """Codes [N, G] -> fp32 (scales, mins), as the kernels compute them."""
        return scale_codes.float() * self.scale[:, None], min_codes.float() * self.min[:, None]


def int4_grid_steps(weight: Tensor, group_size: int) -> GridSteps:
    """The lattice for `weight`'s 8-bit scale codes, from its fp16 round-to-nearest grids: per row
    the largest |min| / 127, and the largest scale / 255 — widened by the most that rounding a min
    down can add to a scale (min step / 8, a grid spanning at least 8 steps), so every group of
    `weight` keeps a grid that covers it. 1 where a row has no nonzero scale or min."""
    _, scales, mins = quantize_int4(weight, group_size)
    return _steps_for(scales, mins)


def _steps_for(scales: Tensor, mins: Tensor) -> GridSteps:
    """`int4_grid_steps` from fp16 grids already made."""
    min_step = mins.float().abs().amax(dim=1) * _STEP_HEADROOM / MIN_CODE_MAX
    widest = scales.float().amax(dim=1) + min_step / _INT4_STEP_COUNTS[-1]
    scale_step = widest * _STEP_HEADROOM / SCALE_CODE_MAX
    return GridSteps(*(torch.where(step > 0, step, torch.ones_like(step)) for step in (scale_step, min_step)))


def pick_scale_bits(weight: Tensor, group_size: int) -> int:
    """8 when 8-bit scale codes cost `weight` little over fp16 grids under round-to-nearest, else 16."""
    w = as_float_matrix(weight)
    fp16 = quantize_int4(w, group_size)
    fp16_error = (dequantize_int4(*fp16, group_size) - w).square().sum()
    coded = quantize_int4(w, group_size, _steps_for(fp16[1], fp16[2]))  # one fp16 pass serves both
    coded_error = (dequantize_int4(*coded, group_size) - w).square().sum()
    return 8 if coded_error <= CODED_ERROR_TOLERANCE * fp16_error else 16


def quantize_int4(weight: Tensor, group_size: int, steps: GridSteps | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Group-wise asymmetric INT4 along K: (q uint8 0..15 [N, K], scales [N, G], mins [N, G]).

    w ≈ q * scale + min with G = K / group_size groups per row. Scales and mins are fp16, or with
    `steps` fp32 values on its lattice (`GridSteps.encode` turns them into the stored codes).
    """
    w = as_float_matrix(weight)
    n, k = w.shape
    check_group_size(n, k, group_size)
    q, scales, mins = quantize_int4_groups(w.reshape(n, k // group_size, group_size), (n, k), steps)
    return q.view(n, k), scales, mins


def quantize_int4_groups(
    groups: Tensor, shape: tuple[int, int], steps: GridSteps | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """groups fp32 [R, G, g] -> (q uint8 [R, G, g], scales, mins [R, G]): per group, the candidate
    grid with the least squared error — fp16 grids that cover the group's [min, max] in 15 ... 8
    steps, or with `steps` (one per row) grids on its lattice near the covering ones.

    `shape` is the whole weight's [N, K], for error messages."""
    per_pass = max(1, _INT4_ELEMENTS_PER_PASS // max(1, groups[0].numel()))
    parts = [
        _best_grids(rows, shape, None if steps is None else steps.rows(slice(start, start + len(rows))))
        for start, rows in zip(range(0, len(groups), per_pass), groups.split(per_pass), strict=True)
    ]
    q, scales, mins = (torch.cat(t) for t in zip(*parts, strict=True))
    return q, scales, mins


def _best_grids(
    groups: Tensor, shape: tuple[int, int], steps: GridSteps | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`quantize_int4_groups` for rows few enough to stay in cache."""
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    best: tuple[Tensor, Tensor, Tensor] | None = None  # scales, mins, squared error [R, G]
    for mins, scales in _candidate_grids(low, high, shape, steps):
        m, s = mins.float()[..., None], scales.float()[..., None]
        error = _levels(groups, m, s).mul_(s).add_(m).sub_(groups).square_().sum(dim=2)
        if best is None:
            best = (scales, mins, error)
            continue
        better = error < best[2]  # these groups take this grid; ties keep the earlier one
        best = tuple(torch.where(better, new, kept) for kept, new in zip(best, (scales, mins, error), strict=True))
    scales, mins, _ = best
    return _levels(groups, mins.float()[..., None], scales.float()[..., None]).to(torch.uint8), scales, mins


def _levels(groups: Tensor, mins: Tensor, scales: Tensor) -> Tensor:
    """Round-to-nearest 0..15 of each weight on its group's grid (a new fp32 tensor)."""
    return (groups - mins).div_(scales).round_().clamp_(0, INT4_LEVELS)


def _candidate_grids(
    low: Tensor, high: Tensor, shape: tuple[int, int], steps: GridSteps | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(min, scale) [R, G] grids to try, the covering grid of the most steps first."""
    if steps is None:
        for count in _INT4_STEP_COUNTS:
            yield _int4_grid(low, high, shape, count)
        return
    for count in _LATTICE_STEP_COUNTS:
        yield from _lattice_grids(low, high, steps, count)


def _lattice_grids(low: Tensor, high: Tensor, steps: GridSteps, count: int) -> Iterator[tuple[Tensor, Tensor]]:
    """fp32 (min, scale) [R, G] on the lattice: the covering grid — min rounded down from `low`,
    scale rounded up so that min + count * scale reaches `high` — and its neighbours one min code
    and one scale code away, each code clamped to its range.

    Rounding both codes outward makes the covering grid up to one step coarser than the group
    needs; a neighbour that clips the group's extreme weights a little is often closer to the
    rest (on gemma3-270m's layers the neighbours cut the squared error by 7-8 %)."""
    min_step, scale_step = steps.min[:, None], steps.scale[:, None]
    covering_min = torch.floor(low / min_step)
    for min_nudge in _CODE_NUDGES:
        mins = (covering_min + min_nudge).clamp_(-MIN_CODE_MAX, MIN_CODE_MAX) * min_step
        covering_scale = torch.ceil((high - mins) / (count * scale_step))
        for scale_nudge in _CODE_NUDGES:
            yield mins, (covering_scale + scale_nudge).clamp_(1, SCALE_CODE_MAX) * scale_step


def _int4_grid(low: Tensor, high: Tensor, shape: tuple[int, int], steps: int = INT4_LEVELS) -> tuple[Tensor, Tensor]:
    """fp16 (min, scale) per group with min <= low and min + steps * scale >= high, both exactly.

    Plain round-to-nearest of min and scale to fp16 could shrink the grid by half an fp16 ulp at
    either end, and the clamped end values would then miss the scale/2 bound.
    """
    minus_inf = torch.full_like(low, float("-inf"), dtype=torch.float16)
    mins = low.half()
    mins = torch.where(mins.float() > low, torch.nextafter(mins, minus_inf), mins)
    span = high.double() - mins.double()  # exact: a difference of two floats fits a double here
    scales = (span / steps).half()
    short = scales.double() * steps + mins.double() < high.double()
    scales = torch.where(short, torch.nextafter(scales, -minus_inf), scales)
    # A constant group whose value is an fp16 number has span 0: any positive scale is exact (q = 0).
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    if not (torch.isfinite(mins).all() and torch.isfinite(scales).all()):
        raise InvalidParameterError(
            f"a [{shape[0]}, {shape[1]}] weight has values beyond float16's range (±65504) or not finite; "
            "INT4 stores fp16 scales and mins — use int8 for this model"
        )
    return mins, scales


def dequantize_int4(q: Tensor, scales: Tensor, mins: Tensor, group_size: int) -> Tensor:
    """float32 [N, K] = q * scale + min, each group of `group_size` columns with its own scale and min."""
    n, k = q.shape
    groups = q.view(n, k // group_size, group_size).float()  # [N, G, g]
    return torch.addcmul(mins.float()[..., None], groups, scales.float()[..., None]).view(n, k)


def pack_int4(q: Tensor) -> Tensor:
    """uint8 [N, K] holding 0..15 -> uint8 [N, K/2]; column 2j in the low nibble, 2j+1 in the high."""
    if q.dim() != 2 or q.shape[1] % 2:
        raise InvalidParameterError(
            f"pack_int4 needs a 2-D [N, K] tensor with even K, got shape {tuple(q.shape)}"
        )
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)  # [N, K/2]


def unpack_int4(packed: Tensor) -> Tensor:
    """uint8 [N, K/2] -> uint8 [N, K] holding 0..15 (inverse of `pack_int4`)."""
    n, half = packed.shape
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).view(n, 2 * half)  # [N, K]
