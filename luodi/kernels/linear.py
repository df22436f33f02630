"""Fast float linear layers for CPU inference: bf16 weights prepacked into oneDNN's blocked layout.

Measured on a 2-core Zen 4 (benchmarks/engine_speed.py has the model-level figures): for the
decode shape (one row) `F.linear` on bf16 reads weights at ~20 GB/s, the prepacked oneDNN
kernel at ~37 GB/s — the memory-bandwidth wall — and it is as fast or faster for prompt
batches. fp16 is fast only for one row (no AVX512-FP16 here), so bf16 + packing is the default.
The packed copy replaces the plain weight, so memory does not grow (except a tied lm_head).
"""

from __future__ import annotations

import torch
from torch import nn


def can_pack_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Module):
    """Inference-only stand-in for a bf16 `nn.Linear` on CPU (no autograd, no state_dict)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 oneDNN-packed"


def pack_linears(model: nn.Module) -> int:
    """Swap every bf16 CPU `nn.Linear` in `model` for a `PackedLinear`; returns how many."""
    if not can_pack_bf16():
        return 0
    # Names only: holding the modules themselves would keep every unpacked weight alive until
    # the end, doubling peak memory.
    swaps = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16 and child.weight.device.type == "cpu"
    ]
    for parent, name in swaps:
        setattr(parent, name, PackedLinear(getattr(parent, name)))
    return len(swaps)
