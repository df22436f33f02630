"""Weight-only quantization numerics: dequant(quant(W)) within derived bounds, and nibble packing.

Bounds, with u = 2^-24 the unit roundoff of float32 and every quantity below an fp32 number:

INT8 (s = the stored fp32 scale of the row, |w| <= amax = 127 s up to rounding of s):
  r = fl(w / s) = (w / s)(1 + d), |d| <= u, so |r - w/s| <= 128 u (|w/s| <= 127 (1 + 2u)).
  q = round(r) clamped to ±127: |q - w/s| <= 1/2 + 128 u (clamping only moves q toward w/s).
  ŵ = fl(q s) = q s (1 + d'):  |w - ŵ| <= s |w/s - q| + u |q s| <= s (1/2 + 128 u) + 127 u s.
  => |w - ŵ| <= s (1/2 + 256 u).
INT4 (per group; m, s the stored fp16 min and scale, chosen so that t = (w - m)/s lies in [0, 15]
exactly — which the test also checks):
  r = fl(fl(w - m) / s) = t (1 + d1)(1 + d2), so |r - t| <= 15 (2u + u^2).
  q = round(r) clamped to 0..15: |q - t| <= 1/2 + 30.1 u.
  ŵ = fl(q s + m): q s is exact (4-bit q times 11-bit s fits 24 bits), one rounding of the sum,
  |ŵ - (q s + m)| <= u |q s + m| <= u (|w| + s).
  => |w - ŵ| <= s/2 + u (31.1 s + |w|) <= s/2 + u (32 s + |w|).
"""

from __future__ import annotations

import pytest
import torch

from luodi.errors import InvalidParameterError
from luodi.quant.weight_only import (
    GridSteps,
    dequantize_int4,
    dequantize_int8,
    int4_grid_steps,
    pack_int4,
    pick_scale_bits,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)

U = 2.0**-24


def hard_weight(n: int = 48, k: int = 256, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with the awkward cases: an outlier column, an all-zero row, a constant
    group, and a row of tiny values."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, 5] *= 40.0  # outlier input channel
    w[3] = 0.0  # all-zero row
    w[7, :128] = 0.3  # constant groups
    w[9] *= 1e-6  # below fp16's normal range once divided into 15 steps
    return w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_roundtrip_within_half_a_step(dtype: torch.dtype) -> None:
    w = hard_weight().to(dtype)
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scales.dtype == torch.float32 and scales.shape == (w.shape[0],)
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    w32 = w.float()
    err = (w32 - dequantize_int8(q, scales)).abs()
    bound = scales[:, None] * (0.5 + 256 * U)
    assert bool((err <= bound).all()), float((err - bound).max())
    # the bound is not vacuous: rounding really does use up most of half a step somewhere
    assert float((err / scales[:, None]).max()) > 0.45
    # each row's largest magnitude sits on the grid's end
    assert bool((q.abs().amax(dim=1)[torch.arange(w.shape[0]) != 3] == 127).all())


def test_int8_all_zero_row_is_exact() -> None:
    w = hard_weight()
    q, scales = quantize_int8(w)
    assert bool((q[3] == 0).all()) and float(scales[3]) == 1.0
    assert bool((dequantize_int8(q, scales)[3] == 0).all())
    assert bool(torch.isfinite(scales).all())


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_roundtrip_within_half_a_step(group_size: int, dtype: torch.dtype) -> None:
    w = hard_weight().to(dtype)
    n, k = w.shape
    q, scales, mins = quantize_int4(w, group_size)
    assert q.dtype == torch.uint8 and q.shape == (n, k) and int(q.max()) <= 15
    assert scales.dtype == mins.dtype == torch.float16
    assert scales.shape == mins.shape == (n, k // group_size)
    assert bool((scales > 0).all())
    # the stored grid covers every group exactly (what the derivation's t in [0, 15] needs)
    groups = w.double().view(n, k // group_size, group_size)
    assert bool((mins.double() <= groups.amin(dim=2)).all())
    assert bool((mins.double() + 15 * scales.double() >= groups.amax(dim=2)).all())
    w32 = w.float()
    s = scales.float().repeat_interleave(group_size, dim=1)  # [N, K]
    err = (w32 - dequantize_int4(q, scales, mins, group_size)).abs()
    bound = s / 2 + U * (32 * s + w32.abs())
    assert bool((err <= bound).all()), float((err - bound).max())
    assert float((err / s).max()) > 0.45


def test_int4_recovers_weights_already_on_a_coarser_grid() -> None:
    """A group whose weights use 9..16 levels of a uniform grid (a GGUF block rarely uses all 16)
    comes back within fp16's rounding of that grid's step and min, not within half a step."""
    gen = torch.Generator().manual_seed(0)
    n, k, g = 64, 256, 32
    levels = torch.randint(8, 16, (n, k // g, 1), generator=gen)  # steps the group spans
    codes = (torch.rand(n, k // g, g, generator=gen) * (levels + 1)).floor().clamp(max=levels)
    codes[..., 0], codes[..., 1] = 0, levels[..., 0]  # the group's min and max on the grid
    step = torch.rand(n, k // g, 1, generator=gen) * 0.01 + 0.001
    low = torch.randn(n, k // g, 1, generator=gen) * 0.05
    w = (low + codes * step).view(n, k)
    q, scales, mins = quantize_int4(w, g)
    err = (dequantize_int4(q, scales, mins, g) - w).abs().view(n, k // g, g)
    # fp16 keeps 11 bits: the grid itself is off by ~levels * step * 2^-11 at most
    assert bool((err <= (levels * step + low.abs()) * 2**-10).all())
    # a 15-step grid would leave up to ~0.45 of the true step on most of these groups
    assert float((err.amax(dim=2, keepdim=True) / step).max()) < 0.1


def test_int4_never_worse_than_the_full_range_grid() -> None:
    """The chosen grid per group has no more squared error than the 15-step min..max grid."""
    from luodi.quant.weight_only import _int4_grid

    w = hard_weight()
    n, k = w.shape
    q, scales, mins = quantize_int4(w, 32)
    chosen = (dequantize_int4(q, scales, mins, 32) - w).square().view(n, k // 32, 32).sum(2)
    groups = w.view(n, k // 32, 32)
    m15, s15 = _int4_grid(groups.amin(2), groups.amax(2), (n, k))
    q15 = torch.round((groups - m15.float()[..., None]) / s15.float()[..., None]).clamp(0, 15)
    full = (q15 * s15.float()[..., None] + m15.float()[..., None] - groups).square().sum(2)
    assert bool((chosen <= full * (1 + 1e-5) + 1e-12).all())


def test_int4_zero_row_and_constant_groups() -> None:
    w = hard_weight()
    q, scales, mins = quantize_int4(w, 32)
    restored = dequantize_int4(q, scales, mins, 32)
    assert bool((restored[3] == 0).all())
    # 0.3 is not an fp16 number, so its group gets a tiny positive step and stays within it
    assert float((restored[7, :128] - 0.3).abs().max()) <= float(scales[7, :4].max()) / 2 + 1e-7
    assert bool(torch.isfinite(scales.float()).all() and torch.isfinite(mins.float()).all())


# -- 8-bit scale codes -------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_on_the_lattice_round_trips_its_codes_within_the_covering_grids_error(group_size: int) -> None:
    """On the lattice of `int4_grid_steps` the steps leave the row's largest scale and |min| just
    inside the code ranges, so each group has a covering grid: min rounded down to the lattice,
    scale (of 15 steps) rounded up. Round-to-nearest on it keeps |w - ŵ| <= scale / 2; the search
    may pick a neighbour that clips, but only one with less squared error, so each group's squared
    error stays <= g * (scale / 2)². The values encode to codes and back exactly."""
    w = hard_weight()
    n, k = w.shape
    steps = int4_grid_steps(w, group_size)
    _, fp16_scales, fp16_mins = quantize_int4(w, group_size)
    nonzero = fp16_mins.float().abs().amax(1) > 0  # all but the zero row (its steps are 1)
    assert float(steps.min[3]) == 1.0
    min_step = fp16_mins.float().abs().amax(1) * (1 + 2**-16) / 127
    assert torch.equal(steps.min[nonzero], min_step[nonzero])
    widest = fp16_scales.float().amax(1) + min_step / 8
    assert torch.equal(steps.scale[nonzero], (widest * (1 + 2**-16) / 255)[nonzero])
    q, scales, mins = quantize_int4(w, group_size, steps)
    assert scales.dtype == mins.dtype == torch.float32
    scale_codes, min_codes = steps.encode(scales, mins)
    assert scale_codes.dtype == torch.uint8 and min_codes.dtype == torch.int8
    assert int(scale_codes.min()) >= 1 and int(min_codes.abs().max()) <= 127
    decoded = steps.decode(scale_codes, min_codes)
    assert torch.equal(decoded[0], scales) and torch.equal(decoded[1], mins)  # bit for bit

    groups = w.double().view(n, k // group_size, group_size)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    ms, ss = steps.min.double()[:, None], steps.scale.double()[:, None]
    covering_min = torch.floor(low / ms) * ms
    covering_scale = torch.ceil((high - covering_min) / (15 * ss)) * ss
    assert bool((covering_scale <= 255 * ss).all() and (covering_min >= -127 * ms).all())
    err = (w - dequantize_int4(q, scales, mins, group_size)).double().view(n, k // group_size, group_size)
    bound = group_size * (covering_scale / 2 + U * (32 * covering_scale + groups.abs().amax(dim=2))) ** 2
    assert bool((err.square().sum(dim=2) <= bound + 1e-18).all())
    clipped = (mins.double() > low) | (mins.double() + 15 * scales.double() < high)
    assert bool(clipped.any())  # the neighbours win somewhere, or the search would not need them


def test_int4_lattice_beats_fp16_grids_on_float_weights() -> None:
    """On Gaussian weights the lattice's covering grids alone come out a little coarser than fp16
    grids (1-2 % more squared error); with the neighbours that may clip, the codes beat them."""
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(1)) * 0.02

    def mse(steps: GridSteps | None) -> float:
        return float((dequantize_int4(*quantize_int4(w, 32, steps), 32) - w).square().mean())

    fp16, coded = mse(None), mse(int4_grid_steps(w, 32))
    assert coded < fp16


def test_pick_scale_bits_codes_float_weights_but_not_weights_on_a_4_bit_grid() -> None:
    w = torch.randn(128, 512, generator=torch.Generator().manual_seed(2)) * 0.02
    assert pick_scale_bits(w, 32) == 8
    on_grid = dequantize_int4(*quantize_int4(w, 32), 32)  # as a Q4_1 GGUF's weights are
    assert pick_scale_bits(on_grid, 32) == 16


def test_int4_lattice_clamps_grids_beyond_its_code_range() -> None:
    """Steps made for another weight (GPTQ's updated columns can outgrow their row's) clamp codes
    to their ranges rather than wrap around."""
    w = hard_weight()
    small = int4_grid_steps(w * 0.01, 32)
    q, scales, mins = quantize_int4(w, 32, small)
    scale_codes, min_codes = small.encode(scales, mins)
    assert int(scale_codes.max()) == 255 and int(min_codes.min()) == -127
    assert torch.equal(small.decode(scale_codes, min_codes)[0], scales)


@pytest.mark.parametrize("group_size", [16, 48, 256])
def test_int4_rejects_group_sizes_outside_the_allowed_set(group_size: int) -> None:
    with pytest.raises(InvalidParameterError, match=r"\[8, 256\].*32, 64, 128"):
        quantize_int4(torch.zeros(8, 256), group_size)


def test_int4_rejects_a_group_size_that_does_not_divide_k() -> None:
    with pytest.raises(InvalidParameterError, match=r"does not divide in_features 96.*fit: 32"):
        quantize_int4(torch.zeros(8, 96), 64)


def test_int4_rejects_values_beyond_fp16() -> None:
    w = torch.zeros(4, 64)
    w[1, 3] = -1e6
    with pytest.raises(InvalidParameterError, match="float16"):
        quantize_int4(w, 32)


def test_quantize_rejects_non_matrices() -> None:
    with pytest.raises(InvalidParameterError, match=r"2-D.*\(3, 4, 5\)"):
        quantize_int8(torch.zeros(3, 4, 5))


def test_pack_int4_layout_low_nibble_is_the_even_column() -> None:
    q = torch.tensor([[1, 2, 3, 4], [15, 0, 0, 15]], dtype=torch.uint8)
    assert pack_int4(q).tolist() == [[0x21, 0x43], [0x0F, 0xF0]]


def test_pack_unpack_roundtrip() -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (37, 128), generator=gen, dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (37, 64)
    assert torch.equal(unpack_int4(packed), q)
    every_byte = torch.arange(256, dtype=torch.uint8).view(4, 64)
    assert torch.equal(pack_int4(unpack_int4(every_byte)), every_byte)


def test_pack_int4_rejects_odd_k() -> None:
    with pytest.raises(InvalidParameterError, match="even K"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))
