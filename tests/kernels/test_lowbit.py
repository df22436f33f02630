"""Low-bit GEMV kernels against the float reference x @ dequantized(W).T.

The native kernels round only the activations (int8 per block of 32, ggml Q8_0), so each output
must lie within the worst-case bound derived in `luodi.kernels.lowbit` (half a quantization step
per element times |W|), plus fp32 summation error and, for 16-bit outputs, the output's own
rounding. The RMS error must also stay near the value the rounding noise predicts (uniform on
±step/2: variance step² / 12), which a wrong layout or scale would exceed by orders of magnitude.
The torch fallback keeps x unrounded but stores scales in bf16; it is checked against a reference
built from those rounded scales, and against the native result. The INT8/INT4 kernel tests run at
each instruction-set level this CPU has a build for (`level`: the default, LUODI_CPU_ISA=avx512vnni
and avx2), against the same bounds: every build reads one packed layout.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from luodi.errors import InvalidParameterError, ModelFormatError
from luodi.kernels import isa, lowbit, native_build

needs_native = pytest.mark.skipif(not lowbit.native_available(), reason=lowbit.native_unavailable_reason())
needs_bf16 = pytest.mark.skipif(not lowbit.bf16_available(), reason="no native BF16 kernel at this level")
LEVELS = ["default", "avx512vnni", "avx2"]


@pytest.fixture(params=LEVELS)
def level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Run the test with the low-bit kernels of this level (LUODI_CPU_ISA), then restore the default."""
    if request.param == "default":
        monkeypatch.delenv(isa.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(isa.ENV_VAR, request.param)
    lowbit._native_or_reason.cache_clear()
    if not lowbit.native_available():
        pytest.skip(f"no native low-bit kernels at level {request.param}: {lowbit.native_unavailable_reason()}")
    assert request.param == "default" or lowbit.native_level() == request.param
    yield request.param
    monkeypatch.undo()
    lowbit._native_or_reason.cache_clear()
    lowbit.native_available()  # reload the default build for the tests that follow

N, K = 67, 300  # N odd and not a multiple of the 16-row tile, K not a multiple of 32 (nor 256)
FP32_SUM_EPS = 1e-5  # fp32 accumulation over a few hundred terms, relative to sum |x| |w|
# One ulp of the output, relative to its value, at most (bf16 keeps 8 significant bits, fp16 11).
OUTPUT_ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


# -- stored forms and their float oracle ---------------------------------------------------------
def activations(m: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Hidden-state-like rows: Gaussian with a few outlier channels 20x larger."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    x[:, torch.randperm(k, generator=gen)[:4]] *= 20
    return x.to(dtype)


def weights(n: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.02


def stored_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scales = w.abs().amax(1) / 127  # [N]
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def stored_int4(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nibbles uint8 [N, K/2], scales fp16 [N, G], mins fp16 [N, G]); the last group may be partial."""
    n, k = w.shape
    groups = -(-k // g)
    padded = F.pad(w, (0, groups * g - k)).view(n, groups, g)  # [N, G, g]
    mins = padded.amin(-1).half()
    scales = ((padded.amax(-1) - mins.float()) / 15).clamp_min(1e-6).half()
    steps = (padded - mins.float()[..., None]) / scales.float()[..., None]
    q = torch.round(steps).clamp(0, 15).to(torch.uint8).view(n, groups * g)[:, :k]  # [N, K]
    return q[:, 0::2] | (q[:, 1::2] << 4), scales, mins


def coded_int4(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """`stored_int4` with each group's scale and min as 8-bit codes on a per-row lattice:
    (nibbles, scale codes uint8 [N, G], min codes int8 [N, G], (scale steps, min steps) fp32 [N])."""
    nibbles, scales, mins = stored_int4(w, g)
    steps = (scales.float().amax(1) / 255, mins.float().abs().amax(1) / 127)
    scale_codes = torch.round(scales.float() / steps[0][:, None]).clamp(1, 255).to(torch.uint8)
    min_codes = torch.round(mins.float() / steps[1][:, None]).clamp(-127, 127).to(torch.int8)
    return nibbles, scale_codes, min_codes, steps


def decoded(scale_codes: torch.Tensor, min_codes: torch.Tensor, steps: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    return scale_codes.float() * steps[0][:, None], min_codes.float() * steps[1][:, None]


def codes(nibbles: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> float q [N, K]; the low nibble is the even column."""
    q = torch.empty(nibbles.shape[0], 2 * nibbles.shape[1])
    q[:, 0::2], q[:, 1::2] = (nibbles & 0x0F).float(), (nibbles >> 4).float()
    return q


def per_column(t: torch.Tensor, g: int, k: int) -> torch.Tensor:
    """[N, G] per-group values -> [N, K]."""
    return t.float().repeat_interleave(g, dim=1)[:, :k]


def dequant_int4(nibbles: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, g: int) -> torch.Tensor:
    q = codes(nibbles)
    return q * per_column(scales, g, q.shape[1]) + per_column(mins, g, q.shape[1])  # [N, K]


def reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.double().T
    return y if bias is None else y + bias.double()


def rms_prediction(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Predicted RMS output error [M, N] from rounding x to int8 per block (uniform noise)."""
    m, k = x.shape
    kp = -(-k // 32) * 32
    step = F.pad(x.float().abs(), (0, kp - k)).view(m, -1, 32).amax(-1) / 127  # [M, K'/32]
    w_sq = F.pad(w.float() ** 2, (0, kp - k)).view(w.shape[0], -1, 32).sum(-1)  # [N, K'/32]
    return ((step**2 / 12) @ w_sq.T).sqrt()


def assert_within_activation_bound(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias=None) -> None:
    ref = reference(x, w, bias)
    err = (y.double() - ref).abs()
    bound = lowbit.activation_error_bound(x, w).double()
    bound += FP32_SUM_EPS * (x.double().abs() @ w.double().abs().T) + 1e-6
    bound += OUTPUT_ULP[y.dtype] * (ref.abs() + bound)
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert (err <= bound).all(), f"max error {err.max():.3g} where bound {bound.flatten()[err.argmax()]:.3g}"
    # Output rounding adds at most half an ulp RMS on top of the activation noise.
    noise = (rms_prediction(x, w).double() ** 2 + (OUTPUT_ULP[y.dtype] / 2 * ref) ** 2).mean().sqrt()
    rms = err.pow(2).mean().sqrt()
    assert rms <= 1.5 * noise, f"RMS error {rms:.3g}, predicted noise {noise:.3g}"


# -- native kernels -------------------------------------------------------------------------------
@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("m", range(1, 10))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_matches_float_reference(m: int, dtype: torch.dtype) -> None:
    w = weights(N, K)
    qweight, scales = stored_int8(w)
    x = activations(m, K, dtype)
    y = lowbit.int8_linear(x, lowbit.prepack_int8(qweight, scales))
    assert_within_activation_bound(y, x, qweight.float() * scales[:, None])


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("m", [1, 3, 8, 20])
def test_int8_rounds_activations_in_two_terms(m: int) -> None:
    """INT8 weight-only also multiplies the rounding residual, itself rounded 254x finer: the error
    is the single-rounding bound / 254, plus fp32 summation — and W8A8's per-row mode keeps one
    rounding (its error reaches well past that)."""
    w = weights(N, K)
    qweight, scales = stored_int8(w)
    x = activations(m, K, torch.float32)
    exact = qweight.float() * scales[:, None]
    packed = lowbit.prepack_int8(qweight, scales)
    ref = reference(x, exact, None)
    scale = x.double().abs() @ exact.double().abs().T
    err = (lowbit.int8_linear(x, packed).double() - ref).abs()
    bound = lowbit.activation_error_bound(x, exact).double() / 254 + FP32_SUM_EPS * scale + 1e-6
    assert (err <= bound).all(), f"max error {err.max():.3g}"
    per_row = (lowbit.int8_linear(x, packed, per_row=True).double() - ref).abs()
    assert float(per_row.max()) > 10 * float(bound.max())


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("m", [1, 5, 9])
def test_int8_per_row_is_smoothquants_rounding(m: int) -> None:
    """W8A8: x rounded once per row as SmoothQuant defines it (scale = max|x_row| / 127, round half
    to even), then multiplied exactly: only fp32 summation separates the result from that product."""
    w = weights(N, K)
    qweight, scales = stored_int8(w)
    x = activations(m, K, torch.float32)
    step = (x.abs().amax(1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)  # [M, 1]
    x_rounded = torch.round(x / step) * step
    exact = qweight.float() * scales[:, None]
    y = lowbit.int8_linear(x, lowbit.prepack_int8(qweight, scales), per_row=True)
    ref = reference(x_rounded, exact, None)
    bound = FP32_SUM_EPS * (x_rounded.double().abs() @ exact.double().abs().T) + 1e-6
    assert ((y.double() - ref).abs() <= bound).all()


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("m", range(1, 10))
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_matches_float_reference(m: int, group_size: int) -> None:
    k = 320  # a partial last group for g = 64 and 128
    nibbles, scales, mins = stored_int4(weights(N, k), group_size)
    x = activations(m, k, torch.bfloat16 if m % 2 else torch.float32)
    y = lowbit.int4_linear(x, lowbit.prepack_int4(nibbles, scales, mins, group_size))
    assert_within_activation_bound(y, x, dequant_int4(nibbles, scales, mins, group_size))


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("m", [1, 4, 9])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_with_coded_scales_matches_float_reference(m: int, group_size: int) -> None:
    k = 320
    nibbles, scale_codes, min_codes, steps = coded_int4(weights(N, k), group_size)
    x = activations(m, k, torch.bfloat16 if m % 2 else torch.float32)
    packed = lowbit.prepack_int4(nibbles, scale_codes, min_codes, group_size, steps)
    assert packed.coded
    y = lowbit.int4_linear(x, packed)
    assert_within_activation_bound(y, x, dequant_int4(nibbles, *decoded(scale_codes, min_codes, steps), group_size))


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bias_and_leading_dims(dtype: torch.dtype) -> None:
    w = weights(N, K)
    bias = torch.randn(N)
    x = activations(6, K, dtype)
    qweight, scales = stored_int8(w)
    y8 = lowbit.int8_linear(x.view(2, 3, K), lowbit.prepack_int8(qweight, scales), bias.to(dtype))
    assert y8.shape == (2, 3, N)
    assert_within_activation_bound(y8.view(6, N), x, qweight.float() * scales[:, None], bias.to(dtype))
    nibbles, s4, m4 = stored_int4(w, 32)
    y4 = lowbit.int4_linear(x.view(2, 3, K), lowbit.prepack_int4(nibbles, s4, m4, 32), bias)
    assert_within_activation_bound(y4.view(6, N), x, dequant_int4(nibbles, s4, m4, 32), bias)


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("n", [61, 16 * 37 + 3])  # a partial tile inside a group of streamed tiles; many tasks
def test_a_rows_outputs_do_not_depend_on_the_rows_beside_it(n: int) -> None:
    """Decode passes stream several tiles at once (1 row: up to 4, 2 rows: 2), batches of more than
    8 rows one at a time: each output must still be summed in one order, so a row alone, in a pair
    and in a batch of 12 gives the same bits (INT8 in both roundings, INT4 with fp16 and coded grids)."""
    k = 320
    w = weights(n, k)
    bias = torch.randn(n)
    qweight, scales = stored_int8(w)
    int8 = lowbit.prepack_int8(qweight, scales)
    nibbles, s4, m4 = stored_int4(w, 32)
    coded_nibbles, scale_codes, min_codes, steps = coded_int4(w, 32)
    layers = {
        "int8": lambda x: lowbit.int8_linear(x, int8, bias),
        "w8a8": lambda x: lowbit.int8_linear(x, int8, bias, per_row=True),
        "int4": lambda x, p=lowbit.prepack_int4(nibbles, s4, m4, 32): lowbit.int4_linear(x, p, bias),
        "int4 coded": lambda x, p=lowbit.prepack_int4(coded_nibbles, scale_codes, min_codes, 32, steps):
            lowbit.int4_linear(x, p, bias),
    }
    x = activations(12, k, torch.float32)
    for name, layer in layers.items():
        batch = layer(x)
        alone = torch.cat([layer(x[i : i + 1]) for i in range(12)])
        pairs = torch.cat([layer(x[i : i + 2]) for i in range(0, 12, 2)])
        assert torch.equal(alone, batch), name
        assert torch.equal(pairs, batch), name


@pytest.mark.usefixtures("level")
def test_zero_and_constant_rows() -> None:
    # An all-zero block has no scale (max |x| = 0); a constant row quantizes exactly.
    w = weights(N, K)
    qweight, scales = stored_int8(w)
    x = torch.zeros(2, K)
    x[1] = 0.5
    y = lowbit.int8_linear(x, lowbit.prepack_int8(qweight, scales))
    ref = reference(x, qweight.float() * scales[:, None], None).float()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert lowbit.int8_linear(torch.zeros(0, K), lowbit.prepack_int8(qweight, scales)).shape == (0, N)


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("group_size", [32, 128])
def test_rows_give_the_same_outputs_alone_and_batched(group_size: int) -> None:
    """Each output is summed in an order fixed by K alone: a row's result is bit-identical whatever
    the rows beside it (batch invariance)."""
    w = weights(N, 256)
    x = activations(11, 256, torch.float32)
    int8 = lowbit.prepack_int8(*stored_int8(w))
    int4 = lowbit.prepack_int4(*stored_int4(w, group_size), group_size)
    for linear, packed in ((lowbit.int8_linear, int8), (lowbit.int4_linear, int4)):
        batched = linear(x, packed)
        for row in (0, 5, 8, 10):
            assert torch.equal(linear(x[row:row + 1], packed)[0], batched[row])


# -- bf16 weights ----------------------------------------------------------------------------------
def assert_bf16_product(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias=None) -> None:
    """The kernel computes bf16(x) @ bf16(w).T exactly but for fp32 summation and output rounding."""
    xb, wb = x.bfloat16(), w.bfloat16()
    ref = reference(xb, wb, bias)
    bound = FP32_SUM_EPS * (xb.double().abs() @ wb.double().abs().T) + 1e-6
    bound += OUTPUT_ULP[y.dtype] * (ref.abs() + bound)
    err = (y.double() - ref).abs()
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert (err <= bound).all(), f"max error {err.max():.3g} where bound {bound.flatten()[err.argmax()]:.3g}"


@needs_bf16
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16, 17, 24, 40])  # decode passes, then 12-row blocks + rest
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_matches_float_reference(m: int, dtype: torch.dtype) -> None:
    w = weights(N, K)
    x = activations(m, K, dtype)
    assert_bf16_product(lowbit.bf16_linear(x, lowbit.prepack_bf16(w)), x, w)


@needs_bf16
@pytest.mark.parametrize("m", [6, 30])
def test_bf16_bias_and_leading_dims(m: int) -> None:
    w, bias = weights(N, K), torch.randn(N)
    x = activations(m, K, torch.bfloat16)
    y = lowbit.bf16_linear(x.view(2, m // 2, K), lowbit.prepack_bf16(w), bias)
    assert y.shape == (2, m // 2, N)
    assert_bf16_product(y.view(m, N), x, w, bias)
    assert lowbit.bf16_linear(torch.zeros(0, K), lowbit.prepack_bf16(w)).shape == (0, N)


# -- fallback -------------------------------------------------------------------------------------
@pytest.fixture
def without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lowbit, "_native_or_reason", lambda: (None, "disabled by the test"))


def fallback_int8_reference(qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # torch's int8 kernel takes its scales in the activations' dtype.
    return qweight.float() * scales.to(dtype).float()[:, None]


def fallback_int4_reference(
    nibbles: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, g: int
) -> torch.Tensor:
    # torch's int4 kernel stores bf16 scale and zero = min + 8 * scale, and computes (q - 8) * s + z.
    q = codes(nibbles)
    s, z = scales.float().bfloat16(), (mins.float() + 8 * scales.float()).bfloat16()
    return (q - 8) * per_column(s, g, q.shape[1]) + per_column(z, g, q.shape[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fallback_int8_matches_reference(without_native: None, dtype: torch.dtype) -> None:
    assert not lowbit.native_available()
    qweight, scales = stored_int8(weights(N, K))
    bias = torch.randn(N)
    x = activations(3, K, dtype)
    packed = lowbit.prepack_int8(qweight, scales)
    assert not packed.is_native
    y = lowbit.int8_linear(x, packed, bias)
    w = fallback_int8_reference(qweight, scales, dtype)
    ref = reference(x, w, bias)
    tol = FP32_SUM_EPS * (x.double().abs() @ w.double().abs().T)
    # The product is rounded to x's dtype, then the bias (also rounded) is added and rounded again.
    tol += OUTPUT_ULP[dtype] * (reference(x, w, None).abs() + bias.abs() + ref.abs()) + 1e-5
    assert y.dtype == dtype and ((y.double() - ref).abs() <= tol).all()


@pytest.mark.parametrize("group_size", [32, 128])
def test_fallback_int4_matches_reference(without_native: None, group_size: int) -> None:
    nibbles, scales, mins = stored_int4(weights(N, 256), group_size)
    x = activations(3, 256, torch.bfloat16)
    packed = lowbit.prepack_int4(nibbles, scales, mins, group_size)
    assert not packed.is_native
    y = lowbit.int4_linear(x, packed)
    w = fallback_int4_reference(nibbles, scales, mins, group_size)
    ref = reference(x, w, None)
    tol = FP32_SUM_EPS * (x.double().abs() @ w.double().abs().T) + OUTPUT_ULP[x.dtype] * ref.abs() + 1e-5
    assert y.shape == (3, N) and ((y.double() - ref).abs() <= tol).all()


def test_fallback_int4_decodes_coded_scales(without_native: None) -> None:
    nibbles, scale_codes, min_codes, steps = coded_int4(weights(N, 256), 32)
    x = activations(3, 256, torch.bfloat16)
    packed = lowbit.prepack_int4(nibbles, scale_codes, min_codes, 32, steps)
    assert not packed.is_native
    w = fallback_int4_reference(nibbles, *decoded(scale_codes, min_codes, steps), 32)
    ref = reference(x, w, None)
    tol = FP32_SUM_EPS * (x.double().abs() @ w.double().abs().T) + OUTPUT_ULP[x.dtype] * ref.abs() + 1e-5
    assert ((lowbit.int4_linear(x, packed).double() - ref).abs() <= tol).all()


@pytest.mark.usefixtures("level")
def test_fallback_agrees_with_native(monkeypatch: pytest.MonkeyPatch) -> None:
    w = weights(N, 256)
    x = activations(4, 256, torch.bfloat16)
    qweight, scales = stored_int8(w)
    nibbles, s4, m4 = stored_int4(w, 64)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        return (lowbit.int8_linear(x, lowbit.prepack_int8(qweight, scales)),
                lowbit.int4_linear(x, lowbit.prepack_int4(nibbles, s4, m4, 64)))

    native = both()
    monkeypatch.setattr(lowbit, "_native_or_reason", lambda: (None, "disabled by the test"))
    fallback = both()
    exact = (qweight.float() * scales[:, None], dequant_int4(nibbles, s4, m4, 64))
    rounded = (fallback_int8_reference(qweight, scales, x.dtype),
               fallback_int4_reference(nibbles, s4, m4, 64))
    for ours, theirs, w_exact, w_rounded in zip(native, fallback, exact, rounded, strict=True):
        # Each within its own bound of x @ W.T: ours from rounding x, theirs from rounding the scales.
        ref = reference(x, w_exact, None)
        allowed = lowbit.activation_error_bound(x, w_exact).double()
        allowed += x.double().abs() @ (w_rounded - w_exact).double().abs().T
        allowed += 2 * OUTPUT_ULP[x.dtype] * (ref.abs() + allowed) + 1e-5
        assert ((ours.double() - theirs.double()).abs() <= allowed).all()


def test_the_vnni_build_gives_the_bf16_builds_outputs_bit_for_bit() -> None:
    """avx512vnni is lowbit.cpp without its BF16 kernel: the same INT8/INT4 code, the same bits."""
    full, why = lowbit.EXTENSION.load()
    vnni, why_vnni = lowbit.VNNI_EXTENSION.load()
    if full is None or vnni is None:
        pytest.skip(f"both AVX-512 builds are needed: {why or why_vnni}")
    assert hasattr(full, "bf16_linear") and not hasattr(vnni, "bf16_linear")
    w, bias = weights(N, K), torch.randn(N)
    int8 = lowbit.prepack_int8(*stored_int8(w))
    int4 = lowbit.prepack_int4(*stored_int4(w, 32), 32)
    for m in (1, 5, 11):
        x = activations(m, K, torch.bfloat16)
        for per_row in (False, True):
            args = (x, int8.weight, int8.scales, bias, N, K, int8.padded_in_features, per_row)
            assert torch.equal(full.int8_linear(*args), vnni.int8_linear(*args))
        args = (x, int4.weight, bias, N, K, int4.padded_in_features, 32, False)
        assert torch.equal(full.int4_linear(*args), vnni.int4_linear(*args))


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch):
    """Forget whether the native kernels were found, before and after the test."""
    lowbit._native_or_reason.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    lowbit._native_or_reason.cache_clear()


def test_failed_build_means_fallback(fresh_probe: pytest.MonkeyPatch) -> None:
    def failing_build(self) -> None:
        raise RuntimeError("Error building extension 'luodi_lowbit': g++ not found")

    fresh_probe.setattr(native_build, "cpu_flags", lambda: frozenset(isa.LEVEL_FLAGS["avx512bf16"]))
    fresh_probe.setattr(native_build.NativeExtension, "_compile", failing_build)
    assert not lowbit.native_available()
    assert "g++ not found" in lowbit.native_unavailable_reason()
    qweight, scales = stored_int8(weights(N, K))
    x = activations(2, K, torch.float32)
    y = lowbit.int8_linear(x, lowbit.prepack_int8(qweight, scales))
    torch.testing.assert_close(y, reference(x, qweight.float() * scales[:, None], None).float())


def test_cpu_without_avx2_means_fallback(fresh_probe: pytest.MonkeyPatch) -> None:
    fresh_probe.setattr(native_build, "cpu_flags", lambda: frozenset({"sse4_2", "avx"}))
    assert not lowbit.native_available()
    assert lowbit.native_level() == "generic"
    assert "avx512_vnni" in lowbit.native_unavailable_reason() and "avx2" in lowbit.native_unavailable_reason()


@needs_native
def test_cpu_without_vnni_runs_the_avx2_build(fresh_probe: pytest.MonkeyPatch) -> None:
    fresh_probe.setattr(native_build, "cpu_flags", lambda: frozenset(isa.LEVEL_FLAGS["avx512"]))
    assert lowbit.native_level() == "avx2" and not lowbit.bf16_available()


@needs_native
def test_generic_level_means_fallback(fresh_probe: pytest.MonkeyPatch) -> None:
    fresh_probe.setenv(isa.ENV_VAR, "generic")
    assert not lowbit.native_available()
    assert "level generic (forced by LUODI_CPU_ISA) excludes avx2" in lowbit.native_unavailable_reason()
    assert not lowbit.prepack_int8(*stored_int8(weights(N, K))).is_native


# -- boundaries -----------------------------------------------------------------------------------
def test_bad_stored_forms_name_the_problem() -> None:
    with pytest.raises(ModelFormatError, match="int8"):
        lowbit.prepack_int8(torch.zeros(4, 8), torch.ones(4))
    with pytest.raises(ModelFormatError, match="scales"):
        lowbit.prepack_int8(torch.zeros(4, 8, dtype=torch.int8), torch.ones(3))
    with pytest.raises(ModelFormatError, match="group size 48"):
        lowbit.prepack_int4(torch.zeros(4, 48, dtype=torch.uint8), torch.ones(4, 2), torch.ones(4, 2), 48)
    with pytest.raises(ModelFormatError, match=r"\[4, 3\]"):
        lowbit.prepack_int4(torch.zeros(4, 48, dtype=torch.uint8), torch.ones(4, 2), torch.ones(4, 2), 32)
    nibbles, steps = torch.zeros(4, 48, dtype=torch.uint8), (torch.ones(4), torch.ones(4))
    codes8 = torch.ones(4, 3, dtype=torch.uint8), torch.ones(4, 3, dtype=torch.int8)
    with pytest.raises(ModelFormatError, match="scale codes must be uint8"):
        lowbit.prepack_int4(nibbles, torch.ones(4, 3), codes8[1], 32, steps)
    with pytest.raises(ModelFormatError, match="min codes must be int8"):
        lowbit.prepack_int4(nibbles, codes8[0], codes8[0], 32, steps)
    with pytest.raises(ModelFormatError, match="steps"):
        lowbit.prepack_int4(nibbles, *codes8, 32, (torch.ones(3), torch.ones(4)))


def test_bad_inputs_name_the_problem() -> None:
    packed = lowbit.prepack_int8(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4))
    with pytest.raises(InvalidParameterError, match="63 features"):
        lowbit.int8_linear(torch.zeros(1, 63), packed)
    with pytest.raises(InvalidParameterError, match="dtype"):
        lowbit.int8_linear(torch.zeros(1, 64, dtype=torch.float64), packed)


GRAVITON2 = frozenset({"fp", "asimd", "fphp", "asimdhp", "asimddp"})


@pytest.fixture
def on_aarch64(fresh_probe: pytest.MonkeyPatch) -> list[str]:
    """An AArch64 machine (what Luodi is not developed on): records which builds it tries to compile."""
    tried: list[str] = []

    def no_aarch64_torch(self) -> None:
        tried.append(self.name)
        raise RuntimeError("no aarch64 torch here")

    fresh_probe.setattr(native_build.platform, "machine", lambda: "aarch64")
    fresh_probe.setattr(native_build, "cpu_flags", lambda: GRAVITON2)
    fresh_probe.setattr(native_build.NativeExtension, "_compile", no_aarch64_torch)
    return tried


def test_an_arm_cpu_with_dot_product_tries_the_neon_build_only(on_aarch64: list[str]) -> None:
    assert not lowbit.native_available()
    assert on_aarch64 == ["luodi_lowbit_neon"]
    assert lowbit.native_unavailable_reason().startswith("NEON low-bit kernels: compiling lowbit_neon.cpp failed")


def test_an_arm_cpu_without_dot_product_or_forced_generic_compiles_nothing(
        on_aarch64: list[str], fresh_probe: pytest.MonkeyPatch) -> None:
    fresh_probe.setattr(native_build, "cpu_flags", lambda: frozenset({"fp", "asimd"}))
    assert not lowbit.native_available() and "CPU lacks asimddp" in lowbit.native_unavailable_reason()
    lowbit._native_or_reason.cache_clear()
    fresh_probe.setattr(native_build, "cpu_flags", lambda: GRAVITON2)
    fresh_probe.setenv(isa.ENV_VAR, "generic")
    assert not lowbit.native_available() and "excludes asimd, asimddp" in lowbit.native_unavailable_reason()
    assert on_aarch64 == [] and not lowbit.prepack_int8(*stored_int8(weights(N, K))).is_native
