"""W8A8Linear against a hand-written reference and a derived error bound.

The reference quantizes x per token and W per output channel (symmetric int8, step = max|row| / 127),
multiplies the integers in float64 (exact), rescales and adds the bias: the module must agree to
fp32 precision on each of its paths — Luodi's native INT8 kernel (per-row mode), oneDNN's u8×s8
kernel and torch._int_mm (after finalize), and the float reference (before finalize, and off the
CPU).

Against the float layer: with x = q_x·a + e_x (|e_x| <= a/2 per token) and w = q_w·b + e_w
(|e_w| <= b_n/2 per channel), y_n - ŷ_n = Σ_k (e_x,k w_nk + q_x,k a e_w,nk), so
|y_n - ŷ_n| <= a/2 · Σ|w_n| + b_n/2 · Σ|x| + K a b_n / 4.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.kernels import lowbit
from luodi.quant import w8a8
from luodi.quant.w8a8 import W8A8Linear, fake_quantize_int8, quantize_per_token

K, N = 96, 80


def float_linear(bias: bool = True, seed: int = 0, out_features: int = N) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(K, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, K, generator=gen) * 0.1)
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=gen))
    return linear


def inputs(rows: int, seed: int = 1) -> torch.Tensor:
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(seed))
    x[:, 7] *= 30.0  # an outlier channel, as SmoothQuant leaves milder ones behind
    return x


def hand_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    def int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = t.abs().amax(dim=1, keepdim=True) / 127  # [R, 1]
        return torch.round(t / step).clamp(-127, 127), step

    q_x, a = int8_rows(x.float())
    q_w, b = int8_rows(weight.float())
    out = (q_x.double() @ q_w.double().T) * a.double() * b.double().T  # [M, N]
    return out if bias is None else out + bias.double()


PATHS = ["reference", "int-mm", "onednn", "native"]


def prepared(layer: W8A8Linear, path: str, monkeypatch: pytest.MonkeyPatch) -> W8A8Linear:
    """The layer set up to run `path`: unfinalized (the float reference), torch._int_mm, oneDNN, or
    Luodi's native INT8 kernel in its per-row mode."""
    if path == "onednn" and not w8a8.onednn_int8_available():
        pytest.skip("oneDNN int8 with VNNI is not available on this CPU")
    if path == "native" and not lowbit.native_available():
        pytest.skip(lowbit.native_unavailable_reason())
    if path in ("int-mm", "onednn"):
        monkeypatch.setattr(lowbit, "native_available", lambda: False)
    if path == "int-mm":
        monkeypatch.setattr(w8a8, "onednn_int8_available", lambda: False)
    if path != "reference":
        layer.finalize()
        assert layer.has_kernel and (layer.native is not None) == (path == "native")
    return layer


@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("path", PATHS)
def test_forward_matches_hand_reference(rows, path, monkeypatch):
    linear = float_linear()
    layer = prepared(W8A8Linear.from_float(linear), path, monkeypatch)
    x = inputs(rows)
    got = layer(x)
    want = hand_reference(x, linear.weight.detach(), linear.bias.detach())
    assert got.dtype == torch.float32 and got.shape == (rows, N)
    # fp32 rescaling and accumulation only: 1e-6 of the magnitude of the terms.
    scale = (x.abs() @ linear.weight.detach().abs().T).double() + linear.bias.detach().abs().double()
    assert bool(((got.double() - want).abs() <= 1e-6 * scale + 1e-6).all())


def test_error_against_the_float_layer_within_the_derived_bound():
    linear = float_linear()
    layer = W8A8Linear.from_float(linear)
    layer.finalize()
    x = inputs(37)
    w = linear.weight.detach()
    a = x.abs().amax(dim=1, keepdim=True) / 127  # [M, 1]
    b = w.abs().amax(dim=1)[None, :] / 127  # [1, N]
    bound = a / 2 * w.abs().sum(dim=1)[None, :] + b / 2 * x.abs().sum(dim=1, keepdim=True) + K * a * b / 4
    err = (layer(x) - linear(x).detach()).abs()
    assert bool((err <= bound * (1 + 1e-4) + 1e-5).all())


@pytest.mark.parametrize("path", PATHS)
def test_three_dimensional_and_bf16_inputs(path, monkeypatch):
    linear = float_linear()
    layer = prepared(W8A8Linear.from_float(linear), path, monkeypatch)
    x = inputs(12).view(3, 4, K)
    out = layer(x)
    assert out.shape == (3, 4, N)
    torch.testing.assert_close(out.view(12, N), layer(x.view(12, K)))
    x_bf16 = x.view(12, K).bfloat16()
    out_bf16 = layer(x_bf16)
    assert out_bf16.dtype == torch.bfloat16
    # bf16 x is quantized as given. Each rounding to bf16 (unit roundoff u = 2^-8) of the product
    # scaled by s_w, of that scaled by s_x, and of the sum with the bias adds at most u of its
    # magnitude (the fp32 path rounds once, at the end).
    want = hand_reference(x_bf16.float(), linear.weight.detach(), linear.bias.detach())
    product = want - linear.bias.detach().double()
    bound = 2**-8 * (2 * product.abs() + want.abs()) * (1 + 1e-3) + 1e-6
    assert bool(((out_bf16.double() - want).abs() <= bound).all())


@pytest.mark.parametrize("path", PATHS)
def test_zero_rows_give_the_bias(path, monkeypatch):
    linear = float_linear()
    layer = prepared(W8A8Linear.from_float(linear), path, monkeypatch)
    out = layer(torch.zeros(2, K))
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, linear.bias.detach().expand(2, N))


@pytest.mark.parametrize("path", PATHS)
def test_concat_equals_side_by_side_outputs(path, monkeypatch):
    shapes = ((0, 64), (1, 16), (2, 16))  # (seed, out_features): q, k, v of different widths
    parts = [W8A8Linear.from_float(float_linear(seed=seed, out_features=n)) for seed, n in shapes]
    fused = prepared(W8A8Linear.concat(parts), path, monkeypatch)
    for part in parts:
        prepared(part, path, monkeypatch)
    x = inputs(37)
    assert fused.out_features == 96
    # the same per-token quantization of x, and rows of W stacked: bit-identical columns
    assert torch.equal(fused(x), torch.cat([part(x) for part in parts], dim=1))


@pytest.mark.parametrize("bias", [True, False])
def test_empty_then_load_state_dict_round_trips(bias):
    layer = W8A8Linear.from_float(float_linear(bias=bias))
    state = layer.state_dict()
    assert set(state) == ({"qweight", "scales", "bias"} if bias else {"qweight", "scales"})
    assert state["qweight"].dtype == torch.int8 and state["qweight"].shape == (N, K)
    assert state["scales"].dtype == torch.float32 and state["scales"].shape == (N,)
    empty = W8A8Linear.empty(K, N, bias=bias, dtype=torch.float32, device="meta")
    empty.load_state_dict(state, assign=True)
    empty.finalize()
    empty.finalize()  # idempotent
    layer.finalize()
    x = inputs(5)
    assert torch.equal(empty(x), layer(x))


def test_dequantize_is_within_half_a_step():
    linear = float_linear()
    layer = W8A8Linear.from_float(linear)
    w = linear.weight.detach()
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert bool(((layer.dequantize() - w).abs() <= step / 2 * (1 + 1e-6)).all())
    ids = torch.tensor([[3, 0], [79, 3]])
    rows = layer.dequantize_rows(ids, torch.float32)
    assert rows.shape == (2, 2, K)
    torch.testing.assert_close(rows, layer.dequantize()[ids])


def test_quantize_per_token_and_fake_quantize():
    x = inputs(4)
    q, scales = quantize_per_token(x)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    torch.testing.assert_close(scales, x.abs().amax(dim=1) / 127)
    torch.testing.assert_close(fake_quantize_int8(x), q.float() * scales[:, None])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_the_reference_path():
    linear = float_linear()
    layer = W8A8Linear.from_float(linear).cuda()
    layer.finalize()
    assert not layer.has_kernel
    x = inputs(37)
    want = hand_reference(x, linear.weight.detach(), linear.bias.detach())
    scale = (x.abs() @ linear.weight.detach().abs().T).double() + linear.bias.detach().abs().double()
    assert bool(((layer(x.cuda()).cpu().double() - want).abs() <= 1e-6 * scale + 1e-6).all())


def test_a_copy_of_a_finalized_layer_runs_and_agrees():
    layer = W8A8Linear.from_float(float_linear())
    layer.finalize()
    clone = copy.deepcopy(layer)  # the opaque oneDNN weight is left behind: finalize again
    assert not clone.has_kernel
    clone.finalize()
    x = inputs(3)
    assert torch.equal(clone(x), layer(x))


def test_options_are_refused():
    with pytest.raises(InvalidParameterError, match="no options"):
        W8A8Linear.from_float(float_linear(), group_size=32)
