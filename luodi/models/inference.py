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
from luodi.models import native_stack


def _concat_linears(layers: list[nn.Module]) -> nn.Module:
    if not isinstance(layers[0], nn.Linear):  # quantized layers know how to stack themselves
        return type(layers[0]).concat(layers)
    weight = torch.cat([layer.weight.detach() for layer in layers])
    has_bias = layers[0].bias is not None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([layer.bias.detach() for layer in layers]), requires_grad=False)
    return fused


def _can_fuse(layers: list[nn.Module | None]) -> bool:
    """Same class and options throughout, and a class that can be stacked: float or quantized linear
    layers (a file may store q/k/v with different INT4 scale storage: those stay apart)."""
    first = layers[0]
    if first is None or any(type(layer) is not type(first) for layer in layers):
        return False
    if hasattr(first, "options") and any(layer.options() != first.options() for layer in layers):
        return False
    return isinstance(first, nn.Linear) or hasattr(first, "concat")


def fuse_projections(model: nn.Module) -> None:
    for module in model.modules():
        if _can_fuse([getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj")]):
            module.qkv_proj = _concat_linears([module.q_proj, module.k_proj, module.v_proj])
            del module.q_proj, module.k_proj, module.v_proj
        if _can_fuse([getattr(module, n, None) for n in ("gate_proj", "up_proj")]):
            module.gate_up_proj = _concat_linears([module.gate_proj, module.up_proj])
            del module.gate_proj, module.up_proj


def finalize_quantized(model: nn.Module) -> None:
    """Move every quantized layer's tensors into its kernel's layout for the device it is on."""
    for module in model.modules():
        if hasattr(module, "scheme"):
            module.finalize()


def prepare_for_inference(model: nn.Module) -> nn.Module:
    fuse_projections(model)
    finalize_quantized(model)
    pack_linears(model)
    native_stack.attach(model)
    return model.eval().requires_grad_(False)
