"""Forward steps through the whole decoder stack in one native call (`native/layer_stack.cpp`).

A step with few new tokens on a small model is bound by per-call overhead as much as by memory:
the Python path calls ~8 native kernels a layer, with module lookups and argument checks around
each (~0.7 ms a step on SmolLM2's 30 layers, as long as reading 5 layers' weights). Once a model
is ready for inference, `attach` describes every layer to the native stack, which then runs those
same kernels back to back: same calls, same order, so the hidden states are bit-identical to the
Python path's. Decode steps gain most; so do short prompt chunks after a cached prefix.

It applies where every layer is one the kernels run natively — packed bf16, INT8, INT4 or W8A8
weights, norms the fused op computes exactly, a native head_dim — on CPU steps with no
autograd, no LoRA adapter (attaching adapters detaches the stack), and fewer rows than
`lowbit.NATIVE_MAX_ROWS` (where quantized layers switch to GEMMs). Anything else runs the Python
path, which stays the reference. Set `LUODI_NATIVE_STACK=0` to turn it off (for measuring what it
saves).

Instruction-set levels: it runs whichever low-bit and fused builds the level in force picked
(`luodi.kernels.isa`), through their tables: at avx512bf16 the AVX-512 ones, at avx2 (and avx512,
whose low-bit layers run the AVX2 build) the AVX2 low-bit build beside the fused build of that level.
The AVX2 low-bit build has no BF16 kernel, so there only INT8, INT4 and W8A8 models qualify.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch
from torch import nn

from luodi.kernels import fused, isa, lowbit
from luodi.kernels.attention import PagedAttention
from luodi.kernels.linear import PackedLinear
from luodi.kernels.native_build import NativeExtension
from luodi.kernels.report import KernelPath, first_line
from luodi.models.layers import is_fusable_norm

log = logging.getLogger(__name__)

# No SIMD of its own (it only sequences calls through the kernels' tables), so one build, without
# -march=native, serves every x86 level whose low-bit and fused builds offer tables.
EXTENSION = NativeExtension(
    "luodi_stack", "layer_stack.cpp", "layer stack", required_cpu_flags=isa.LEVEL_FLAGS["avx2"],
    cflags=("-O3", "-fopenmp"),
)
_disabled = os.environ.get("LUODI_NATIVE_STACK", "1") == "0"
Rope = tuple[torch.Tensor, torch.Tensor]


@functools.cache
def _native_or_reason() -> tuple[Any, str]:
    module, reason = EXTENSION.load()
    if module is None:
        log.debug("native layer stack unavailable (%s); every step runs the Python path", reason)
    return module, reason


def _native() -> Any:
    return _native_or_reason()[0]


class NativeStack:
    """The decoder stack of one model as the native op holds it; see the module docstring."""

    def __init__(self, stack: Any, dtype: torch.dtype) -> None:
        self.stack = stack
        self.dtype = dtype  # of the activations its norms were checked for

    def __call__(self, x: torch.Tensor, ropes: tuple[Rope, ...], kv: Any) -> torch.Tensor | None:
        """Final-normed hidden states [T, hidden] for the step's embedded tokens x [T, hidden] — or
        None when this step is not one the stack runs (the caller then runs its layers)."""
        if _disabled or x.dtype != self.dtype or not fused.enabled_for(x):
            return None
        if not isinstance(kv, PagedAttention):
            return None
        if x.shape[0] >= lowbit.NATIVE_MAX_ROWS or kv.k_caches[0].dtype != torch.float32:  # as attend_rotary
            return None
        meta, cos, sin = kv.meta, [cos for cos, _ in ropes], [sin for _, sin in ropes]
        x = x.contiguous()
        if meta.max_query_len == 1:
            return self.stack.decode(x, cos, sin, kv.k_caches, kv.v_caches, meta.slot_mapping, meta.kv_slots,
                                     meta.seq_lens)
        return self.stack.chunks(x, cos, sin, kv.k_caches, kv.v_caches, meta.slot_mapping, meta.kv_slots,
                                 meta.chunk_bounds, meta.context_lens)


def attach(model: nn.Module) -> bool:
    """Give the backbone of an inference-ready model (`model.model`) a `NativeStack`, where every
    layer qualifies; returns whether it did."""
    backbone = getattr(model, "model", None)
    if backbone is None or not hasattr(backbone, "native_stack") or not fused.native_available():
        return False
    native = _native() if lowbit.has_native_api() else None
    if native is None:
        return False
    dtype = next(model.parameters()).dtype
    layers = [_layer(native, layer, dtype) for layer in backbone.layers]
    final_norm = _norm(native, backbone.norm, dtype)
    if any(layer is None for layer in layers) or final_norm is None:
        return False
    stack = native.LayerStack(lowbit.native_api(), fused.native_api(), layers, final_norm)
    backbone.native_stack = NativeStack(stack, dtype)
    return True


def stack_path(model: nn.Module) -> KernelPath:
    """Whether `model`'s steps run through the native stack, and if not, why."""
    if _disabled:
        return KernelPath("layer stack", "python", "LUODI_NATIVE_STACK=0")
    if getattr(getattr(model, "model", None), "native_stack", None) is not None:
        return KernelPath("layer stack", "native")
    if not fused.native_available():
        why = "needs the native fused ops"
    elif not lowbit.has_native_api():
        why = f"the {lowbit.native_level()} low-bit build offers no kernel table"
    elif _native() is None:
        why = first_line(_native_or_reason()[1])
    else:
        why = "not every layer is one it runs natively (dtype, norm, head_dim, LoRA adapters, device)"
    return KernelPath("layer stack", "python", why)


def detach(model: nn.Module) -> None:
    """Run every step in Python from now on (its layers were changed after `attach`)."""
    backbone = getattr(model, "model", None)
    if getattr(backbone, "native_stack", None) is not None:
        backbone.native_stack = None


def _layer(native: Any, layer: nn.Module, dtype: torch.dtype) -> Any:
    """The native description of a decoder layer, from the norms its family declares (`LayerNorms`),
    or None if it does not qualify."""
    attn, mlp, norms = layer.self_attn, layer.mlp, layer.norms
    pre_mlp = getattr(layer, norms.pre_mlp)
    parts = {
        "input_norm": _norm(native, getattr(layer, norms.input), dtype),
        "pre_mlp_norm": _norm(native, pre_mlp, dtype),
        "qkv": _linear(native, getattr(attn, "qkv_proj", None)), "o": _linear(native, attn.o_proj),
        "gate_up": _linear(native, mlp.gate_up_proj), "down": _linear(native, mlp.down_proj),
    }
    if any(part is None for part in parts.values()) or mlp.hidden_act not in fused.GATED_ACTS:
        return None
    spec = native.Layer()
    for name, part in parts.items():
        setattr(spec, name, part)
    spec.act = fused.GATED_ACTS[mlp.hidden_act]
    if not _add_output_norms(spec, layer, pre_mlp):
        return None
    return spec if _add_attention(native, spec, attn, dtype) else None


def _add_output_norms(spec: Any, layer: nn.Module, pre_mlp: nn.Module) -> bool:
    """Norms of the attention and MLP outputs, where the family declares them (Gemma 3; the native
    op takes both or neither). The fused op applies one eps and flavour to both norms of an add, so
    they must match the pre-MLP norm's (as the Python path requires)."""
    names = layer.norms
    if names.post_attention is None and names.post_mlp is None:
        return True
    if names.post_attention is None or names.post_mlp is None:
        return False
    post_attention, post_mlp = getattr(layer, names.post_attention), getattr(layer, names.post_mlp)
    if any(_norm_key(n) != _norm_key(pre_mlp) for n in (post_attention, post_mlp)):
        return False
    spec.post_attention_norm, spec.post_mlp_norm = post_attention.weight.detach(), post_mlp.weight.detach()
    return True


def _add_attention(native: Any, spec: Any, attn: nn.Module, dtype: torch.dtype) -> bool:
    """Heads, scale, window, RoPE table and per-head norms, where the native attention takes them."""
    if attn.head_dim not in fused.NATIVE_HEAD_DIMS or attn.rotary_dim != attn.head_dim:  # whole heads only
        return False
    q_norm, k_norm = attn.q_norm, attn.k_norm
    if q_norm is not None:  # Qwen3, Gemma 3: one eps and flavour for both
        if not is_fusable_norm(q_norm, dtype) or _norm_key(q_norm) != _norm_key(k_norm):
            return False
        spec.q_norm, spec.k_norm = q_norm.weight.detach(), k_norm.weight.detach()
        spec.head_norm_eps, spec.head_norm_is_offset = q_norm.eps, q_norm.is_offset
    spec.num_heads, spec.num_kv_heads, spec.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
    spec.scale = attn.scale
    spec.sliding_window = attn.sliding_window or 0
    spec.rope = attn.rope_index  # Gemma 3's local layers: the second table
    return True


def _norm_key(norm: nn.Module | None) -> tuple:
    return type(norm), getattr(norm, "eps", None)  # the type decides the flavour


def _norm(native: Any, norm: nn.Module, dtype: torch.dtype) -> Any:
    """The native description of a norm the fused op computes exactly for `dtype`, or None."""
    if not is_fusable_norm(norm, dtype):
        return None
    spec = native.Norm()
    spec.weight, spec.eps, spec.is_offset = norm.weight.detach(), norm.eps, norm.is_offset
    return spec


def _linear(native: Any, module: nn.Module | None) -> Any:
    """A packed bf16 / INT8 / INT4 / W8A8 layer's native description, or None for any other layer."""
    packed = getattr(module, "native", None)
    if packed is None:
        return None
    spec = native.Linear()
    if type(module) is PackedLinear:
        spec.kind, spec.bias = 0, module.bias
    elif getattr(module, "scheme", None) in ("int8", "w8a8") and packed.is_native:
        spec.kind, spec.scales, spec.bias = 1, packed.scales, module.native_bias
        spec.per_row = module.scheme == "w8a8"  # SmoothQuant: per-token activation scales
    elif getattr(module, "scheme", None) == "int4" and packed.is_native:
        spec.kind, spec.bias, spec.group_size, spec.coded = 2, module.native_bias, packed.group_size, packed.coded
    else:
        return None
    spec.weight = packed.weight
    spec.out_features, spec.in_features = packed.out_features, packed.in_features
    spec.padded_in_features = packed.padded_in_features
    return spec
