"""Fast float linear layers for CPU inference: bf16 weights prepacked for a native or oneDNN kernel.

Measured on a 2-core Zen 4 (benchmarks/engine_speed.py has the model-level figures): for the
decode shape (one row) `F.linear` on bf16 reads weights at ~20 GB/s; oneDNN's prepacked kernel
reads them at the bandwidth wall but costs ~13 us of dispatch per call, so over SmolLM2's 121
matmuls a token it reaches ~30 GB/s; Luodi's native bf16 kernel (`luodi.kernels.lowbit`, ~1.5 us
per call) ~40 GB/s, and it stays within 7 % of oneDNN up to 512-row prompt batches
(`luodi.kernels.lowbit` has the figures). So the native
layout is the one copy kept when it builds; oneDNN's otherwise. fp16 is fast only for one row (no
AVX512-FP16 here), so bf16 + packing is the default. The packed copy replaces the plain weight,
so memory does not grow; a tied embedding table reads its rows from the lm_head's native copy
(`PackedEmbedding`), so it is kept once too (Gemma 3's 262k-token table alone is 335 MB in bf16).
"""

from __future__ import annotations

import torch
from torch import nn

from luodi.kernels import lowbit


def can_pack_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Module):
    """Inference-only stand-in for a bf16 `nn.Linear` on CPU (no autograd, no state_dict)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.native = lowbit.prepack_bf16(weight) if lowbit.bf16_available() else None
        self.packed = None if self.native else torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        bias = None if linear.bias is None else linear.bias.detach()
        self.bias = bias.float() if bias is not None and self.native else bias  # the native kernel adds in fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native is not None:
            return lowbit.bf16_linear(x, self.native, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        kernel = "native" if self.native is not None else "oneDNN"
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 {kernel}-packed"


class PackedEmbedding(nn.Module):
    """Inference-only stand-in for an `nn.Embedding` tied to a natively packed lm_head: rows are
    gathered from the lm_head's tiles ([N'/16][K'/2][16][2] bf16, `luodi.kernels.lowbit`)."""

    def __init__(self, lm_head: PackedLinear) -> None:
        super().__init__()
        packed = lm_head.native
        assert packed is not None, "only the native layout can be read row by row"
        self.num_embeddings, self.embedding_dim = packed.out_features, packed.in_features
        tiles = packed.weight.numel() // (packed.padded_in_features * lowbit.TILE * 2)
        self.tiles = packed.weight.view(torch.bfloat16).view(tiles, packed.padded_in_features // 2, lowbit.TILE, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.tiles[ids // lowbit.TILE, :, ids % lowbit.TILE]  # [..., K'/2, 2]
        return rows.flatten(-2)[..., : self.embedding_dim]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows of the tied lm_head's bf16 native tiles"


def pack_linears(model: nn.Module) -> int:
    """Swap every bf16 CPU `nn.Linear` in `model` for a `PackedLinear`; returns how many."""
    if not (lowbit.bf16_available() or can_pack_bf16()):
        return 0
    # Names only: holding the modules themselves would keep every unpacked weight alive until
    # the end, doubling peak memory.
    swaps = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16 and child.weight.device.type == "cpu"
    ]
    packed_by_weight = {}
    for parent, name in swaps:
        linear = getattr(parent, name)
        packed = PackedLinear(linear)
        packed_by_weight[id(linear.weight)] = packed
        setattr(parent, name, packed)
    _share_tied_embeddings(model, packed_by_weight)
    return len(swaps)


def _share_tied_embeddings(model: nn.Module, packed_by_weight: dict[int, PackedLinear]) -> None:
    """Point each embedding whose table was a packed layer's weight at that packed copy."""
    tied = [
        (parent, name, packed_by_weight[id(child.weight)])
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Embedding and id(child.weight) in packed_by_weight
    ]
    for parent, name, packed in tied:
        if packed.native is not None:
            setattr(parent, name, PackedEmbedding(packed))
