"""Quantized linear modules against the float oracle `x @ dequantize().T + bias`.

Tolerance for the bf16 paths (the CPU kernels, the prompt-batch GEMM, the reference path with
bf16 x). With r = 2^-9 the unit roundoff of bf16, s and m a weight's INT4 scale and min, and
z = m + 8 s, each output y_n = sum_k x_k w_nk + b_n picks up, to first order, at most
  - x rounded to bf16 (fp32 x only):              r * sum_k |x_k| |w_nk|
  - the weight as the path sees it, r * sum_k |x_k| times
      INT8 kernel (bf16 scale) and GEMM:          |w|
      INT4 kernel, (q - 8) * bf16(s) + bf16(z):   8 s + |z|
      INT4 GEMM, bf16(q * bf16(s)) + bf16(m):     |w| + 30 s + |m|  <=  |w| + 38 s + |z|
      reference path, bf16(w):                    |w|
  - the product rounded to bf16:                  r * sum_k |x_k| |w_nk|
  - the bias added in bf16:                       r * (sum_k |x_k| |w_nk| + |b_n|)
fp32 accumulation adds K * 2^-24 relative, negligible at K = 256. With A = |w| + 8 s + |z|
(INT4) or |w| (INT8), every path stays within 5 r (|x| @ A.T + |b|); the tests allow
8 r (...) = 2^-6 (...). fp32 x through the fp32 reference path is exact up to fp32 accumulation:
1e-5 relative to the same absolute sum. The tolerance is loose for a subtle bug (a 1 % error in
every scale would pass), so the kernel semantics — nibble order, zero point, groups, padding,
chunking — are also checked exactly, with one-hot x and weights exactly representable in bf16.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import luodi.quant.linear as quant_linear
from luodi.errors import InvalidParameterError
from luodi.kernels import lowbit
from luodi.kernels.linear import can_pack_bf16
from luodi.quant.linear import Int4Linear, Int8Linear, QuantEmbedding, QuantLinear
from luodi.quant.weight_only import pack_int4

K = 256
SCHEMES = [
    ("int8", {}), *(("int4", {"group_size": g, "scale_bits": 8}) for g in (32, 64, 128)),
    ("int4", {"group_size": 32, "scale_bits": 16}),
]
SCHEME_IDS = ["int8", "int4-g32", "int4-g64", "int4-g128", "int4-g32-fp16-grid"]
CLASSES: dict[str, type[QuantLinear]] = {"int8": Int8Linear, "int4": Int4Linear}


def float_linear(out_features: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(K, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, K, generator=gen) * 0.05)
        linear.weight[:, 3] *= 20.0  # an outlier input channel
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=gen) * 0.1)
    return linear


def quantized(
    scheme: str, options: dict, out_features: int = 100, bias: bool = True, seed: int = 0,
) -> QuantLinear:
    return CLASSES[scheme].from_float(float_linear(out_features, bias, seed), **options)


def abs_weight_bound(layer: QuantLinear) -> torch.Tensor:
    """A [N, K] from the module docstring: what each weight may be off by, in units of r."""
    w = layer.dequantize().double().abs()
    if isinstance(layer, Int4Linear):
        g = layer.group_size
        scales, mins = (t.double() for t in layer.grid())
        s = scales.repeat_interleave(g, dim=1)
        z = (mins + 8 * scales).repeat_interleave(g, dim=1)
        w = w + 8 * s + z.abs()
    return w


def assert_matches_oracle(layer: QuantLinear, x: torch.Tensor, y: torch.Tensor, bf16_paths: bool) -> None:
    w = layer.dequantize().double()
    bias = torch.zeros(layer.out_features, dtype=torch.float64) if layer.bias is None else layer.bias.double()
    expected = x.double() @ w.T + bias
    scale = x.double().abs() @ abs_weight_bound(layer).T + bias.abs()
    tol = 2.0**-6 * scale if bf16_paths else 1e-5 * scale + 1e-7
    err = (y.double() - expected).abs()
    assert bool((err <= tol).all()), f"max error {float(err.max())}, worst err/tol {float((err / tol).max())}"


def set_path(layer: QuantLinear, path: str) -> None:
    layer.gemm_min_rows = 1 if path == "gemm" else 1 << 30  # type: ignore[misc]  # instance override


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the prompt-batch GEMM dequantize 16 rows at a time, so N = 100 or 40 takes several
    chunks and a ragged last one."""
    monkeypatch.setattr(quant_linear, "GEMM_CHUNK_WEIGHTS", 16 * K)


@pytest.mark.parametrize("scheme,options", SCHEMES, ids=SCHEME_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [1, 37])
def test_forward_equals_dequantized_matmul(
    scheme: str, options: dict, dtype: torch.dtype, rows: int, small_chunks: None,
) -> None:
    layer = quantized(scheme, options)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows)).to(dtype)
    before = layer(x)
    assert before.dtype == dtype and before.shape == (rows, layer.out_features)
    assert_matches_oracle(layer, x, before, bf16_paths=dtype == torch.bfloat16)
    layer.finalize()
    assert layer.has_kernel == (lowbit.native_available() or can_pack_bf16())
    for path in ("kernel", "gemm"):
        set_path(layer, path)
        after = layer(x)
        assert after.dtype == dtype and after.shape == (rows, layer.out_features)
        assert_matches_oracle(layer, x, after, bf16_paths=dtype == torch.bfloat16 or layer.has_kernel)


@pytest.mark.parametrize("scheme,options", SCHEMES, ids=SCHEME_IDS)
def test_forward_keeps_leading_dimensions_and_works_without_bias(scheme: str, options: dict) -> None:
    layer = quantized(scheme, options, out_features=48, bias=False)
    layer.finalize()
    x = torch.randn(2, 3, K).bfloat16()
    y = layer(x)
    assert y.shape == (2, 3, 48)
    assert_matches_oracle(layer, x.view(6, K), y.view(6, 48), bf16_paths=True)


def exact_layer(scheme: str, options: dict, out_features: int) -> QuantLinear:
    """Random stored values whose dequantized weights, and any one-hot product, are exact in bf16:
    scales 1, 1/2, 1/4 and mins in steps of 1/4 down to -4 (fp16 values, or codes and steps)."""
    gen = torch.Generator().manual_seed(3)
    layer = CLASSES[scheme].empty(K, out_features, bias=False, dtype=torch.bfloat16, device="cpu", **options)
    if scheme == "int8":
        qweight = torch.randint(-127, 128, (out_features, K), generator=gen, dtype=torch.int8)
        scales = 2.0 ** -torch.randint(0, 8, (out_features,), generator=gen).float()
        layer.load_state_dict({"qweight": qweight, "scales": scales}, assign=True)
        return layer
    shape = (out_features, K // options["group_size"])
    q = torch.randint(0, 16, (out_features, K), generator=gen, dtype=torch.uint8)
    scale_codes = 2 ** torch.randint(0, 3, shape, generator=gen)  # 1, 2, 4 quarters
    min_codes = torch.randint(-16, 1, shape, generator=gen)  # quarters
    if options["scale_bits"] == 16:
        grid = {"scales": (scale_codes / 4).half(), "mins": (min_codes / 4).half()}
    else:
        quarters = torch.full((out_features,), 0.25)
        grid = {"scale_codes": scale_codes.to(torch.uint8), "min_codes": min_codes.to(torch.int8),
                "scale_steps": quarters, "min_steps": quarters.clone()}
    layer.load_state_dict({"qweight": pack_int4(q), **grid}, assign=True)
    return layer


@pytest.mark.skipif(not can_pack_bf16(), reason="no bf16 CPU kernels on this machine")
@pytest.mark.parametrize("scheme,options", SCHEMES, ids=SCHEME_IDS)
@pytest.mark.parametrize("out_features", [64, 40])  # 40: the INT4 kernel's N % 16 padding
@pytest.mark.parametrize("path", ["kernel", "gemm"])
def test_kernel_semantics_are_exact(
    scheme: str, options: dict, out_features: int, path: str, small_chunks: None,
) -> None:
    """One-hot rows pick single weights: the kernel must reproduce dequantize() bit for bit."""
    layer = exact_layer(scheme, options, out_features)
    layer.finalize()
    assert layer.has_kernel
    set_path(layer, path)
    picked = layer(torch.eye(K, dtype=torch.bfloat16))  # [K, N] = W.T
    assert torch.equal(picked.float(), layer.dequantize().T)


@pytest.mark.parametrize("scheme,options", SCHEMES, ids=SCHEME_IDS)
def test_concat_equals_outputs_side_by_side(scheme: str, options: dict) -> None:
    parts = [quantized(scheme, options, out_features=n, seed=i) for i, n in enumerate((64, 16, 40))]
    fused = type(parts[0]).concat(parts)
    assert fused.out_features == 120 and fused.options() == parts[0].options()
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))
    x = torch.randn(5, K)
    for finalize in (False, True):
        if finalize:
            fused.finalize()
            for part in parts:
                part.finalize()
        for dtype in (torch.float32, torch.bfloat16):
            side_by_side = torch.cat([part(x.to(dtype)) for part in parts], dim=-1)
            y = fused(x.to(dtype))
            if fused.has_kernel:  # the int kernels compute each output column on its own
                assert torch.equal(y, side_by_side)
            else:  # a float GEMM may block K differently for another N: one rounding apart
                tol = 1e-5 if dtype == torch.float32 else 2.0**-7
                torch.testing.assert_close(y, side_by_side, rtol=tol, atol=tol)


def test_concat_rejects_mismatched_layers() -> None:
    a = quantized("int4", {"group_size": 32}, out_features=16)
    b = quantized("int4", {"group_size": 64}, out_features=16)
    with pytest.raises(InvalidParameterError, match="group_size"):
        Int4Linear.concat([a, b])
    c = quantized("int8", {}, out_features=16, bias=False)
    with pytest.raises(InvalidParameterError, match="bias"):
        Int8Linear.concat([quantized("int8", {}, out_features=16), c])


@pytest.mark.parametrize("scheme,options", SCHEMES, ids=SCHEME_IDS)
def test_saved_state_dict_reloads_into_empty_module_exactly(
    scheme: str, options: dict, tmp_path: Path,
) -> None:
    layer = quantized(scheme, options).to(torch.bfloat16)
    expected_keys = {"qweight", "bias"} | (
        {"scales"} if scheme == "int8" else
        {"scales", "mins"} if options["scale_bits"] == 16 else {"scale_codes", "min_codes", "scale_steps", "min_steps"}
    )
    x = torch.randn(3, K).bfloat16()
    reference_out = layer(x)
    layer.finalize()
    assert set(layer.state_dict()) == expected_keys  # kernel layouts are never saved
    finalized_out = layer(x)
    save_file(layer.state_dict(), str(tmp_path / "layer.safetensors"))

    loaded = type(layer).empty(K, layer.out_features, bias=True, dtype=torch.bfloat16, **options)
    assert all(t.device.type == "meta" for t in loaded.state_dict().values())
    loaded.load_state_dict(load_file(str(tmp_path / "layer.safetensors")), assign=True)
    for name, tensor in layer.state_dict().items():
        assert loaded.get_buffer(name).dtype == tensor.dtype and torch.equal(loaded.get_buffer(name), tensor)
    assert torch.equal(loaded(x), reference_out)
    loaded.finalize()
    assert torch.equal(loaded(x), finalized_out)


@pytest.mark.parametrize("scheme,options", SCHEMES, ids=SCHEME_IDS)
def test_stored_dtypes_and_shapes(scheme: str, options: dict) -> None:
    layer = quantized(scheme, options, out_features=24)
    if scheme == "int8":
        assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == (24, K)
        assert layer.scales.dtype == torch.float32 and layer.scales.shape == (24,)
    else:
        groups = K // options["group_size"]
        assert layer.qweight.dtype == torch.uint8 and layer.qweight.shape == (24, K // 2)
        if options["scale_bits"] == 16:
            assert layer.scales.dtype == layer.mins.dtype == torch.float16
            assert layer.scales.shape == layer.mins.shape == (24, groups)
        else:
            assert layer.scale_codes.dtype == torch.uint8 and layer.min_codes.dtype == torch.int8
            assert layer.scale_codes.shape == layer.min_codes.shape == (24, groups)
            assert layer.scale_steps.dtype == layer.min_steps.dtype == torch.float32
            assert layer.scale_steps.shape == layer.min_steps.shape == (24,)
    assert layer.bias is not None and layer.bias.dtype == torch.float32


@pytest.mark.parametrize("scheme,options", SCHEMES, ids=SCHEME_IDS)
def test_finalize_is_idempotent(scheme: str, options: dict) -> None:
    layer = quantized(scheme, options, out_features=32)
    layer.finalize()
    first = {name: t.data_ptr() for name, t in layer.named_buffers()}
    layer.finalize()
    assert {name: t.data_ptr() for name, t in layer.named_buffers()} == first


@pytest.mark.skipif(not lowbit.native_available(), reason=lowbit.native_unavailable_reason())
@pytest.mark.parametrize("scheme,options", SCHEMES[:2], ids=SCHEME_IDS[:2])
def test_native_kernels_need_no_onednn_bf16(scheme: str, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """An AVX2 CPU has no oneDNN bf16; the native kernels still serve it (else every call dequantizes)."""
    monkeypatch.setattr(quant_linear, "can_pack_bf16", lambda: False)
    layer = quantized(scheme, options)
    layer.finalize()
    assert layer.has_kernel and layer.native is not None
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(3))
    assert_matches_oracle(layer, x, layer(x), bf16_paths=True)


def test_finalize_on_meta_makes_no_kernel() -> None:
    layer = Int4Linear.empty(K, 32, bias=False, dtype=torch.bfloat16, group_size=64)
    layer.finalize()
    assert not layer.has_kernel


def test_int4_rejects_a_bad_group_size() -> None:
    with pytest.raises(InvalidParameterError, match=r"\[16, 256\]"):
        Int4Linear.from_float(float_linear(16), group_size=48)


def test_int4_rejects_bad_scale_bits() -> None:
    with pytest.raises(InvalidParameterError, match="scale bits 12"):
        Int4Linear.from_float(float_linear(16), group_size=32, scale_bits=12)


def test_int4_without_scale_bits_is_the_fp16_grid_of_older_files() -> None:
    layer = Int4Linear.empty(K, 32, bias=False, dtype=torch.bfloat16, group_size=64)
    assert layer.scale_bits == 16 and set(layer.state_dict()) == {"qweight", "scales", "mins"}
    assert Int4Linear.from_float(float_linear(16)).scale_bits == 8  # new layers: 8-bit codes


def test_int8_rejects_options() -> None:
    with pytest.raises(InvalidParameterError, match="group_size"):
        Int8Linear.from_float(float_linear(16), group_size=32)


@pytest.mark.parametrize("scheme,options", SCHEMES, ids=SCHEME_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_rows_equal_dequantized_table(scheme: str, options: dict, dtype: torch.dtype) -> None:
    table = quantized(scheme, options, out_features=50, bias=False)
    embedding = QuantEmbedding(table, dtype=dtype)
    assert (embedding.num_embeddings, embedding.embedding_dim) == (50, K)
    ids = torch.tensor([0, 49, 7, 7, 23])
    full = table.dequantize().to(dtype)
    assert torch.equal(embedding(ids), full[ids])
    assert torch.equal(embedding(ids.view(1, 5)), full[ids].view(1, 5, K))
    table.finalize()  # a tied lm_head finalizes the same table; rows must not change
    assert torch.equal(embedding(ids), full[ids])


def test_embedding_dtype_defaults_to_the_table_model_dtype() -> None:
    table = Int8Linear.empty(K, 10, bias=False, dtype=torch.bfloat16)
    assert QuantEmbedding(table).dtype == torch.bfloat16


def shifted(tensor: torch.Tensor, elements: int) -> torch.Tensor:
    """A copy of `tensor` whose data starts `elements` past an allocation boundary, like a tensor
    memory-mapped from the middle of a file."""
    buffer = torch.empty(tensor.numel() + elements, dtype=tensor.dtype)
    view = buffer[elements:].view(tensor.shape)
    view.copy_(tensor)
    return view


@pytest.mark.parametrize("rows", [1, 19])
def test_int8_kernel_takes_misaligned_weights_and_inputs(rows: int) -> None:
    """torch's int8 kernel crashes on unaligned data; a safetensors mmap gives exactly that."""
    layer = quantized("int8", {}, out_features=64)
    state = {name: shifted(t, 8) for name, t in layer.state_dict().items()}
    loaded = Int8Linear.empty(K, 64, bias=True, dtype=torch.float32)
    loaded.load_state_dict(state, assign=True)
    assert loaded.qweight.data_ptr() % 16 != 0
    loaded.finalize()
    x = shifted(torch.randn(rows, K).bfloat16(), 1)
    assert_matches_oracle(loaded, x, loaded(x), bf16_paths=True)
