"""SmoothQuant W8A8 linear layers: int8 weights per output channel, int8 activations per token.

Owns the W8A8 numerics (Xiao et al. 2023, sec. 3: per-token dynamic activation scales, static
per-channel weight scales) and the module that stores and runs them. The smoothing that makes
activations quantizable is folded into the float model beforehand (`luodi.quant_tools.smoothing`);
this module knows nothing of models, calibration or files beyond its buffers.

    y = (s_x[:, None] * s_w[None, :]) * (q_x @ q_wᵀ) + bias

q_x = round(x / s_x) with s_x = max|x_row| / 127, computed at run time; q_w and s_w are stored
(`weight_only.quantize_int8`: symmetric, [-127, 127]). The integer product is exact (int32).

Kernels on CPU (after `finalize`), measured against bf16 (benchmarks/README.md, "W8A8 layers on
torch's kernels"): at one row every path is bound by memory bandwidth (bf16 reads twice the
bytes); at 512 rows the integer matmul does ~1.8x the bf16 GEMM's work per second.

- oneDNN's u8×s8 `qlinear` (weights prepacked once; x shifted by 128 into u8 with zero point
  128) beats `torch._int_mm` (which takes `qweight` as stored) at prompt sizes because it also
  applies the per-channel scale and writes x's dtype in the same pass. It is used where the CPU
  has VNNI, whose u8×s8 dot products accumulate in int32 without the int16 saturation of older
  x86 int8 code paths; elsewhere `torch._int_mm`. The packed copy doubles the layer's memory, as
  INT4's kernel layout does (`luodi.quant.linear`); a memory-mapped `qweight` stays evictable.
- What the paths add to the bare matmul is eager PyTorch's per-token quantization and rescale:
  ~10 small ops, a few percent at one row and a fifth of the time at 512 rows.

Where Luodi's native kernels build (`luodi.kernels.lowbit`, AVX-512 VNNI), they replace both up
to `lowbit.NATIVE_MAX_ROWS` rows: the INT8 kernel in its per-row mode quantizes each row with the
same scale and rounding as above (q_x and s_x bit-identical to the torch path) and streams the
tiled weight once per pass, so a W8A8 model decodes as fast as weight-only INT8 and runs inside
the native layer stack (`luodi.models.native_stack`). Only the fp32 summation order differs from
`torch._int_mm`'s single int32 sum: block sums of 32 products are exact, then scaled and added in
fp32, a few ulps of the output apart.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from luodi.kernels import lowbit
from luodi.quant.linear import Int8Storage, QuantLinear
from luodi.quant.weight_only import INT8_MAX

_TINY = torch.finfo(torch.float32).tiny
_U8_ZERO_POINT = 128  # q + 128 lies in [1, 255]
_ONEDNN_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _per_token(x: Tensor, offset: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # Few passes over x, since this runs on every call: the max is exact in x's own dtype;
    # |x / scale| <= 127 up to one rounding, so round() needs no clamp; an all-zero row gets the
    # smallest normal scale and q = 0, which is exact.
    scales = x.abs().amax(dim=-1).float().div_(INT8_MAX).clamp_(min=_TINY)  # [M]
    q = torch.div(x, scales[:, None]).round_()  # [M, K] fp32 by type promotion
    if offset:
        q.add_(offset)
    return q.to(dtype), scales


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: (q int8 [M, K] in [-127, 127], scales fp32 [M]); x ≈ q * scales[:, None]."""
    return _per_token(x, 0, torch.int8)


def fake_quantize_int8(x: Tensor) -> Tensor:
    """float32 [M, K]: each row rounded to its symmetric int8 grid (for error searches)."""
    q, scales = quantize_per_token(x)
    return q.float() * scales[:, None]


def onednn_int8_available() -> bool:
    """Whether oneDNN's u8×s8 matmul can run exactly and fast here (x86 with VNNI)."""
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)
    return torch.backends.mkldnn.is_available() and bool(is_vnni())


class W8A8Linear(Int8Storage, QuantLinear):
    """W8A8: `qweight` int8 [N, K] and `scales` fp32 [N] stored; activations quantized per call."""

    scheme = "w8a8"

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype,
                 device: torch.device | str = "meta") -> None:
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.qweight: Tensor
        self.scales: Tensor
        qweight = torch.empty(out_features, in_features, dtype=torch.int8, device=device)  # [N, K]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))
        # oneDNN's packed weight: an opaque tensor, so a plain attribute (not a buffer) that
        # copies and pickles of the module leave behind (see __getstate__).
        self._packed: Tensor | None = None
        self._zero_points: Tensor | None = None

    # -- kernels ---------------------------------------------------------------------------------

    def finalize(self) -> None:
        """CPU: Luodi's native kernel where it builds, else oneDNN where it has VNNI, else
        torch._int_mm on `qweight` (idempotent)."""
        if self.qweight.device.type != "cpu":
            self._drop_kernel()
            return
        if self.has_kernel:
            return
        if lowbit.native_available():
            self.native = lowbit.prepack_int8(self.qweight, self.scales)
            self.native_bias = None if self.bias is None else self.bias.float()
        elif onednn_int8_available():
            self._packed = torch.ops.onednn.qlinear_prepack(self.qweight, None)
            self._zero_points = torch.zeros(self.out_features, dtype=torch.int64)  # [N]
        self.has_kernel = True

    def _drop_kernel(self) -> None:
        self._packed, self._zero_points, self.has_kernel = None, None, False
        self.native, self.native_bias = None, None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        # finalize the copy again
        state.update(_packed=None, _zero_points=None, has_kernel=False, native=None, native_bias=None)
        return state

    def _onednn_forward(self, rows: Tensor) -> Tensor:
        assert self._packed is not None
        q_x, x_scales = _per_token(rows, _U8_ZERO_POINT, torch.uint8)
        out_dtype = rows.dtype if rows.dtype in _ONEDNN_OUT_DTYPES else torch.float32
        out = torch.ops.onednn.qlinear_pointwise(
            q_x, 1.0, _U8_ZERO_POINT, self._packed, self.scales, self._zero_points, None, 1.0, 0, out_dtype,
            "none", [], "",
        )  # [M, N] = (q_x @ q_wᵀ) * s_w, in x's dtype
        out.mul_(x_scales[:, None])
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(rows.dtype)

    def _int_mm_forward(self, rows: Tensor) -> Tensor:
        q_x, x_scales = quantize_per_token(rows)
        if self.has_kernel and q_x.device.type == "cpu":
            acc = torch._int_mm(q_x, self.qweight.t())  # [M, N] int32
        else:
            # Reference (CUDA, and before finalize): float products of integers are exact and
            # their fp32 sum is off by at most a few ulps of the result.
            acc = q_x.float() @ self.qweight.float().t()  # [M, N]
        out = torch.mul(acc, x_scales[:, None]).mul_(self.scales)  # [M, N] fp32
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(rows.dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)  # [M, K]
        if self.native is not None and rows.is_cpu and rows.shape[0] < lowbit.NATIVE_MAX_ROWS:
            out = lowbit.int8_linear(rows, self.native, self.native_bias, per_row=True)
        elif self._packed is not None and rows.device.type == "cpu":
            out = self._onednn_forward(rows)
        else:
            out = self._int_mm_forward(rows)
        return out.reshape(*x.shape[:-1], self.out_features)
