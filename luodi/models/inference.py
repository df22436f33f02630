"""Preparing a loaded model for inference only: fewer, larger matmuls and the fastest kernels.

q/k/v and gate/up projections read the same input, so each trio/pair becomes one linear layer
(one weight read, one kernel call instead of three/two per layer), and on CPU bf16 weights are
prepacked for oneDNN (`luodi.kernels.linear`). The model then no longer has HF's per-projection
parameters: do this after loading for serving, never before training or saving.
"""

from __future__ import annotations

import torch
from torch import nn

from luodi.kernels.linear import pack_linears


def _concat_linears(layers: list[nn.Linear]) -> nn.Linear:
    weight = torch.cat([layer.weight.detach() for layer in layers])
    has_bias = layers[0].bias is not None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]), requires_grad=False)
    return fused


def fuse_projections(model: nn.Module) -> None:
    for module in model.modules():
        if all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):
            module.qkv_proj = _concat_linears([module.q_proj, module.k_proj, module.v_proj])
            del module.q_proj, module.k_proj, module.v_proj
        if all(isinstance(getattr(module, n, None), nn.Linear) for n in ("gate_proj", "up_proj")):
            module.gate_up_proj = _concat_linears([module.gate_proj, module.up_proj])
            del module.gate_proj, module.up_proj


def prepare_for_inference(model: nn.Module) -> nn.Module:
    fuse_projections(model)
    pack_linears(model)
    return model.eval().requires_grad_(False)
