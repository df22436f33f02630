"""Inference modules for weight-only INT8 / INT4 linear layers and quantized embedding tables.

Owns the stored buffers of a quantized layer (their names and shapes are the saved format), the
conversion of those buffers into a kernel's layout (`finalize`), and the choice of kernel per
call. The arithmetic of quantizing lives in `luodi.quant.weight_only`; this module knows nothing
of models, files or the engine.

Every module computes `x @ W.T + bias` with W = `dequantize()`. Before `finalize` — and on any
device without a kernel, CUDA included — it does exactly that, dequantizing per call: obviously
right, and the weights stay small in memory. After `finalize` on a CPU with bf16 support:

- decode-sized batches (M < `gemm_min_rows`) run torch's weight-only kernels,
  `aten._weight_int8pack_mm` (reads `qweight` as stored) and `aten._weight_int4pack_mm_for_cpu`
  (its own nibble layout, made once by `aten._convert_weight_to_int4pack_for_cpu`). Both are fast
  only with bf16 activations, so x of any dtype is cast to bf16 and the output back: for fp32 x
  that is ~20x faster than the fp32 dequantized reference (2048x2048, one row: 0.10 ms against
  2.3 ms), and rounding x to bf16 (relative 2^-9) is well below the weight rounding itself.
- prompt batches (M >= `gemm_min_rows`) dequantize the weight to bf16 per call, 1M weights at a
  time, and run plain bf16 GEMMs: the int kernels cost time linear in M (~0.05 ms per row of a
  2048x2048 layer on one core) while bf16 GEMM runs ~2.5x more FLOP/s, which repays the
  dequantization (~1 ms INT8, ~4 ms INT4 per 4M weights) from a few dozen rows up. Prepacking the
  dequantized weight for oneDNN (`luodi.kernels.linear`) costs ~10 ms per 4M weights, which never
  repays within one call.

Measured on TinyLlama-1.1B layer shapes against bf16 oneDNN-packed layers (benchmarks/README.md,
"Weight-only INT8 / INT4 layers on torch's kernels"): at decode INT4 takes about half bf16's time
and INT8 about the same (on one core no kernel here reaches the memory wall, so INT8 halves the
bytes read but not the time); the kernel and dequantize + GEMM break even at M ≈ 32-48 for INT8
and M ≈ 128 for INT4, hence `gemm_min_rows` 48 and 128.

INT4 keeps its stored nibbles (`qweight`) beside the kernel layout after `finalize`: they feed
prompt-batch dequantization, embedding rows and the state_dict. When the model is loaded from a
memory-mapped file they stay file-backed pages, evictable under memory pressure.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from luodi.errors import InvalidParameterError
from luodi.kernels import lowbit
from luodi.kernels.linear import can_pack_bf16
from luodi.quant.weight_only import (
    DEFAULT_SCALE_BITS,
    GridSteps,
    check_group_size,
    check_scale_bits,
    dequantize_int4,
    dequantize_int8,
    int4_grid_steps,
    pack_int4,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)

GEMM_CHUNK_WEIGHTS = 1 << 20  # prompt-batch GEMM: weights dequantized per chunk (2 MB of bf16)


class QuantLinear(nn.Module):
    """Base of the quantized linear layers: bias, concat, finalize and the per-call kernel choice.

    A subclass registers its persistent buffers in `__init__` (all stacked along out_features, so
    `concat` can join them generically), quantizes in `from_float`, and supplies `dequantize`,
    `dequantize_rows` and, for a CPU kernel, `_prepare_cpu_kernel` / `_kernel_matmul`.
    """

    scheme: ClassVar[str]
    gemm_min_rows: ClassVar[int] = 1 << 62  # CPU: from this many rows, dequantize + bf16 GEMM wins
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype,
                 device: torch.device | str = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.dtype = dtype  # the model's float dtype: bias, embedding rows
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)
        self.has_kernel = False  # set by `finalize` where a CPU kernel layout was made

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> Self:
        raise NotImplementedError

    @classmethod
    def empty(cls, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype,
              device: torch.device | str = "meta", **options: Any) -> Self:
        """Buffers of the right shapes and dtypes, to be filled by `load_state_dict(..., assign=True)`."""
        return cls(in_features, out_features, bias=bias, dtype=dtype, device=device, **options)

    def options(self) -> dict[str, Any]:
        """Keyword options that `empty` needs to rebuild this layer (e.g. INT4's group size)."""
        return {}

    @classmethod
    def concat(cls, layers: list[Self]) -> Self:
        """One layer whose output is the layers' outputs side by side (exact: rows are stacked).

        Joins the stored buffers only; finalize the result, not its parts.
        """
        if not layers:
            raise InvalidParameterError("concat needs at least one layer to join")
        first = layers[0]
        for layer in layers:
            if type(layer) is not type(first) or layer.in_features != first.in_features \
                    or layer.options() != first.options() or (layer.bias is None) != (first.bias is None):
                raise InvalidParameterError(
                    f"cannot concatenate {type(layer).__name__}(in_features={layer.in_features}, "
                    f"{layer.options()}) with {type(first).__name__}(in_features={first.in_features}, "
                    f"{first.options()}): scheme, in_features, options and bias must agree"
                )
        state = {
            name: torch.cat([layer.get_buffer(name) for layer in layers])
            for name in first.state_dict()
        }
        out_features = sum(layer.out_features for layer in layers)
        fused = cls.empty(first.in_features, out_features, bias=first.bias is not None, dtype=first.dtype,
                          device="meta", **first.options())
        fused.load_state_dict(state, assign=True)
        return fused

    # -- numerics --------------------------------------------------------------------------------

    def dequantize(self) -> Tensor:
        """float32 [N, K]: the weight this layer multiplies by."""
        raise NotImplementedError

    def dequantize_rows(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        """Rows `ids` (any shape) of the weight in `dtype`: [*ids.shape, K], equal to dequantize()[ids]."""
        raise NotImplementedError

    # -- kernels ---------------------------------------------------------------------------------

    def finalize(self) -> None:
        """Make the fastest kernel layout for the device the buffers are on (idempotent).

        CPU with Luodi's native low-bit kernels (any level, AVX2 included) or with oneDNN bf16 (for
        torch's int kernels): the subclass's kernel tensors (non-persistent buffers). Any other
        device: none, so forward dequantizes per call.
        """
        device = self.get_buffer(self._weight_buffer).device
        if self.has_kernel and device.type == "cpu":
            return
        self._drop_kernel()
        # An AVX2 CPU has no oneDNN bf16, but the native kernels need none: without them it would
        # dequantize every weight on every call.
        has_cpu_kernel = lowbit.native_available() or can_pack_bf16()
        self.has_kernel = device.type == "cpu" and has_cpu_kernel and self._prepare_cpu_kernel()
        if self.native is not None and self.bias is not None:
            self.native_bias = self.bias.float()

    _weight_buffer: ClassVar[str] = "qweight"
    _kernel_buffers: ClassVar[tuple[str, ...]] = ()

    def _prepare_cpu_kernel(self) -> bool:
        """Register the CPU kernel's tensors; False where the layer's shape has no kernel."""
        return False

    def _drop_kernel(self) -> None:
        for name in self._kernel_buffers:
            if hasattr(self, name):
                delattr(self, name)
        self.native = None
        self.native_bias = None
        self.has_kernel = False

    # The native VNNI GEMV (luodi.kernels.lowbit) when it built on this CPU: it streams weights at
    # 2-4x the rate of torch's int8/int4 kernels for decode-sized M (benchmarks/lowbit_kernels.py).
    native: lowbit.PackedInt8 | lowbit.PackedInt4 | None = None

    native_bias: Tensor | None = None  # the bias as the native kernels add it (fp32), set by finalize

    def _kernel_matmul(self, x: Tensor) -> Tensor:
        """bf16 [M, K] contiguous -> bf16 [M, N], no bias."""
        raise NotImplementedError

    def _native_matmul(self, x: Tensor) -> Tensor:
        """x [..., K] @ W.T + bias through the native kernel (`self.native` is set)."""
        raise NotImplementedError

    def _dequantize_bf16(self, start: int, end: int) -> Tensor:
        """bf16 [end - start, K]: rows of the weight for the prompt-batch GEMM."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.native is not None and x.is_cpu and x.numel() < lowbit.NATIVE_MAX_ROWS * self.in_features:
            # Kept short: it runs ~120 times a token. The native kernels take x in any float dtype
            # and any leading dims, and add the fp32 bias themselves.
            return self._native_matmul(x)
        rows = x.reshape(-1, self.in_features)  # [M, K]
        if self.has_kernel and rows.device.type == "cpu":
            out = self._cpu_forward(rows)
        else:  # reference: the CUDA path, and every path before finalize
            bias = None if self.bias is None else self.bias.to(x.dtype)
            out = F.linear(rows, self.dequantize().to(x.dtype), bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _cpu_forward(self, rows: Tensor) -> Tensor:
        x = rows.to(torch.bfloat16).contiguous()  # the int kernels are fast only with bf16 activations
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        # The native kernels beat dequantize + bf16 GEMM up to NATIVE_MAX_ROWS rows (measured);
        # torch's int kernels only below gemm_min_rows.
        gemm_min_rows = lowbit.NATIVE_MAX_ROWS if self.native is not None else self.gemm_min_rows
        if rows.shape[0] >= gemm_min_rows:
            out = self._gemm(x, bias)
        else:
            out = self._kernel_matmul(x)
            if bias is not None:
                out = out + bias
        return out.to(rows.dtype)

    def _gemm(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """x [M, K] bf16 @ W.T, dequantizing GEMM_CHUNK_WEIGHTS weights at a time.

        Chunks stay in cache, and no full-size temporary is allocated per call: a fresh 46 MB
        buffer page-faults on every call; chunked is 2-4x faster on 11264x2048 (measured).
        """
        step = max(16, GEMM_CHUNK_WEIGHTS // self.in_features)
        parts = [
            F.linear(x, self._dequantize_bf16(start, min(start + step, self.out_features)),
                     None if bias is None else bias[start:start + step])
            for start in range(0, self.out_features, step)
        ]  # each [M, rows]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def extra_repr(self) -> str:
        options = "".join(f", {k}={v}" for k, v in self.options().items())
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}{options}, has_kernel={self.has_kernel}")


def _aligned(tensor: Tensor) -> Tensor:
    """`tensor`, copied if its data does not start on a 64-byte boundary.

    aten._weight_int8pack_mm (torch 2.13) crashes on a weight not 16-byte aligned once M >= 4,
    and on activations not 32-byte aligned; torch's allocator aligns to 64 (measured).
    """
    return tensor if tensor.data_ptr() % 64 == 0 else tensor.clone()


def _float_bias(linear: nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.detach().clone()


class Int8Storage:
    """Per-output-channel symmetric INT8 weights (`qweight` int8 [N, K], `scales` fp32 [N]): how
    they are made and read back, shared by weight-only INT8 and SmoothQuant W8A8."""

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> Self:
        _no_options(cls, options)
        weight = linear.weight
        layer = cls.empty(linear.in_features, linear.out_features, bias=linear.bias is not None,
                          dtype=weight.dtype, device="meta")
        qweight, scales = quantize_int8(weight)
        layer.load_state_dict(_state(qweight=qweight, scales=scales, bias=_float_bias(linear)), assign=True)
        return layer

    def dequantize(self) -> Tensor:
        return dequantize_int8(self.qweight, self.scales)

    def dequantize_rows(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        rows = self.qweight[ids].float() * self.scales[ids].unsqueeze(-1)  # [*ids, K]
        return rows.to(dtype)


class Int8Linear(Int8Storage, QuantLinear):
    """Per-output-channel symmetric INT8: `qweight` int8 [N, K], `scales` fp32 [N]."""

    scheme = "int8"
    gemm_min_rows = 48
    _kernel_buffers = ("kernel_scales",)
    qweight: Tensor
    scales: Tensor
    kernel_scales: Tensor  # bf16 [N], made by finalize

    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype,
                 device: torch.device | str = "meta") -> None:
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        shape = (out_features, in_features)
        self.register_buffer("qweight", torch.empty(shape, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))

    def _prepare_cpu_kernel(self) -> bool:
        # aten._weight_int8pack_mm gives wrong sums or crashes unless K % 16 == 0 (torch 2.13, measured).
        if self.in_features % 16:
            return False
        self.qweight = _aligned(self.qweight)  # a memory-mapped file gives any alignment
        self.register_buffer("kernel_scales", self.scales.to(torch.bfloat16), persistent=False)
        if lowbit.native_available():
            self.native = lowbit.prepack_int8(self.qweight, self.scales)
        return True

    def _kernel_matmul(self, x: Tensor) -> Tensor:
        if self.native is not None:
            return lowbit.int8_linear(x, self.native)
        return torch.ops.aten._weight_int8pack_mm(_aligned(x), self.qweight, self.kernel_scales)

    def _native_matmul(self, x: Tensor) -> Tensor:
        return lowbit.int8_linear(x, self.native, self.native_bias)

    def _dequantize_bf16(self, start: int, end: int) -> Tensor:
        # int8 * bf16 promotes to bf16 in one pass; the bf16 scale is the one the kernel uses.
        return self.qweight[start:end] * self.kernel_scales[start:end, None]


class Int4Linear(QuantLinear):
    """Group-wise asymmetric INT4: `qweight` uint8 [N, K/2] (packed) and each group's scale and min.

    With `scale_bits` 16 those are `scales`, `mins` fp16 [N, K/g]; with 8 they are codes on a
    per-row lattice (`weight_only.GridSteps`): `scale_codes` uint8 and `min_codes` int8 [N, K/g],
    `scale_steps` and `min_steps` fp32 [N].
    """

    scheme = "int4"
    gemm_min_rows = 128
    _kernel_buffers = ("kernel_weight", "kernel_scales_and_zeros", "kernel_scales", "kernel_mins")
    qweight: Tensor
    kernel_weight: Tensor  # torch's int4 CPU layout, made by finalize
    kernel_scales_and_zeros: Tensor  # bf16 [G, N', 2]
    kernel_scales: Tensor  # bf16 [N, G]
    kernel_mins: Tensor  # bf16 [N, G]

    # Files written before 8-bit scale codes existed name no scale_bits: their grids are fp16.
    def __init__(self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype,
                 device: torch.device | str = "meta", group_size: int = 32, scale_bits: int = 16) -> None:
        check_group_size(out_features, in_features, group_size)
        check_scale_bits(scale_bits)
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.group_size, self.scale_bits = group_size, scale_bits
        grouped = (out_features, in_features // group_size)
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        if scale_bits == 16:
            self.register_buffer("scales", torch.empty(grouped, dtype=torch.float16, device=device))
            self.register_buffer("mins", torch.empty(grouped, dtype=torch.float16, device=device))
        else:
            self.register_buffer("scale_codes", torch.empty(grouped, dtype=torch.uint8, device=device))
            self.register_buffer("min_codes", torch.empty(grouped, dtype=torch.int8, device=device))
            self.register_buffer("scale_steps", torch.empty(out_features, dtype=torch.float32, device=device))
            self.register_buffer("min_steps", torch.empty(out_features, dtype=torch.float32, device=device))

    def options(self) -> dict[str, Any]:
        return {"group_size": self.group_size, "scale_bits": self.scale_bits}

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> Self:
        group_size = options.pop("group_size", 32)
        scale_bits = options.pop("scale_bits", DEFAULT_SCALE_BITS)
        _no_options(cls, options)
        check_scale_bits(scale_bits)
        steps = int4_grid_steps(linear.weight, group_size) if scale_bits == 8 else None
        return cls.from_quantized(linear, quantize_int4(linear.weight, group_size, steps), group_size, steps)

    @classmethod
    def from_quantized(cls, linear: nn.Linear, quantized: tuple[Tensor, Tensor, Tensor], group_size: int,
                       steps: GridSteps | None = None) -> Self:
        """The layer storing `quantized` = (q, scales, mins) as `quantize_int4` (or GPTQ) made them for
        `linear`'s weight, on the lattice of `steps` if given; the bias is `linear`'s."""
        layer = cls.empty(linear.in_features, linear.out_features, bias=linear.bias is not None,
                          dtype=linear.weight.dtype, device="meta", group_size=group_size,
                          scale_bits=16 if steps is None else 8)
        q, scales, mins = quantized
        if steps is None:
            grid = {"scales": scales, "mins": mins}
        else:
            scale_codes, min_codes = steps.encode(scales, mins)
            grid = {"scale_codes": scale_codes, "min_codes": min_codes, "scale_steps": steps.scale,
                    "min_steps": steps.min}
        layer.load_state_dict(_state(qweight=pack_int4(q), bias=_float_bias(linear), **grid), assign=True)
        return layer

    @property
    def steps(self) -> GridSteps | None:
        """The lattice of the 8-bit scale codes (None for fp16 grids)."""
        return None if self.scale_bits == 16 else GridSteps(self.scale_steps, self.min_steps)

    def grid(self, rows: Tensor | slice = slice(None)) -> tuple[Tensor, Tensor]:
        """Each group's (scale, min) for `rows`: [n, G] each, fp16 values or decoded fp32 ones."""
        if self.steps is None:
            return self.scales[rows], self.mins[rows]
        return self.steps.rows(rows).decode(self.scale_codes[rows], self.min_codes[rows])

    def dequantize(self) -> Tensor:
        return dequantize_int4(unpack_int4(self.qweight), *self.grid(), self.group_size)

    def dequantize_rows(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        flat = ids.reshape(-1)
        q = unpack_int4(self.qweight[flat])  # [T, K]
        rows = dequantize_int4(q, *self.grid(flat), self.group_size)
        return rows.to(dtype).reshape(*ids.shape, self.in_features)  # [*ids, K]

    def _prepare_cpu_kernel(self) -> bool:
        # The kernel computes w = (q - 8) * scale + zero per group (aten/native/cpu/int4mm_kernel.cpp),
        # so zero = min + 8 * scale; tests/quant/test_linear.py checks this against dequantize().
        # Its packing needs N % 16 == 0: pad with zero-scale rows and slice them off the output.
        scales, mins = self.grid()
        self.register_buffer("kernel_scales", scales.to(torch.bfloat16), persistent=False)  # [N, G]
        self.register_buffer("kernel_mins", mins.to(torch.bfloat16), persistent=False)  # [N, G]
        if lowbit.native_available():
            if self.steps is None:
                self.native = lowbit.prepack_int4(self.qweight, scales, mins, self.group_size)
            else:
                self.native = lowbit.prepack_int4(self.qweight, self.scale_codes, self.min_codes, self.group_size,
                                                  self.steps)
            return True
        n, padded = self.out_features, -(-self.out_features // 16) * 16
        q = F.pad(unpack_int4(self.qweight).to(torch.int32), (0, 0, 0, padded - n))  # [N', K]
        scales, mins = scales.float(), mins.float()
        scales_and_zeros = torch.stack((scales, mins + 8 * scales), dim=-1)  # [N, G, 2]
        scales_and_zeros = F.pad(scales_and_zeros, (0, 0, 0, 0, 0, padded - n))  # [N', G, 2]
        kernel_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.register_buffer("kernel_weight", kernel_weight, persistent=False)
        self.register_buffer("kernel_scales_and_zeros",
                             scales_and_zeros.transpose(0, 1).to(torch.bfloat16).contiguous(),  # [G, N', 2]
                             persistent=False)
        return True

    def _kernel_matmul(self, x: Tensor) -> Tensor:
        if self.native is not None:
            return lowbit.int4_linear(x, self.native)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self.kernel_weight, self.group_size, self.kernel_scales_and_zeros
        )  # [M, N']
        return out if out.shape[1] == self.out_features else out[:, : self.out_features]

    def _native_matmul(self, x: Tensor) -> Tensor:
        return lowbit.int4_linear(x, self.native, self.native_bias)

    def _dequantize_bf16(self, start: int, end: int) -> Tensor:
        # Straight to bf16, one broadcast multiply-add: ~1.4x faster than dequantize() (fp32) + cast.
        q = unpack_int4(self.qweight[start:end]).view(end - start, -1, self.group_size)  # [n, G, g]
        weight = q * self.kernel_scales[start:end, :, None] + self.kernel_mins[start:end, :, None]
        return weight.view(end - start, self.in_features)


def _no_options(cls: type, options: dict[str, Any]) -> None:
    if options:
        raise InvalidParameterError(f"{cls.__name__} takes no options, got {', '.join(sorted(options))}")


def _state(**tensors: Tensor | None) -> dict[str, Tensor]:
    return {name: tensor for name, tensor in tensors.items() if tensor is not None}


class QuantEmbedding(nn.Module):
    """A token embedding backed by a quantized table: ids [*] -> rows [*, hidden] in `dtype`.

    With tied embeddings the same table object is also the lm_head, so it is stored once.
    """

    def __init__(self, table: QuantLinear, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.table = table
        self.row_dtype = dtype  # None: the table's, which is the model's float dtype

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype if self.row_dtype is None else self.row_dtype

    @property
    def num_embeddings(self) -> int:
        return self.table.out_features

    @property
    def embedding_dim(self) -> int:
        return self.table.in_features

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.table.dequantize_rows(input_ids, self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, dtype={self.dtype}"
