"""Llama family (Llama 2/3, SmolLM2, TinyLlama, Mistral): HF `LlamaForCausalLM`, parameter names kept.

The model sees flattened tokens of a whole batch — `input_ids` and `positions` of shape [T] — and
reaches its KV cache only through the `AttentionBackend` it is handed; it knows nothing of
requests. Qwen2 and Qwen3 reuse these classes with their one difference each.

In GGUF (architecture "llama", Mistral's files too): llama.cpp's converter permutes q/k rows for
GGML's RoPE, undone by `gguf_sanitize`, and stores Llama 3.1+'s RoPE scaling as a tensor of
divisors, read back into `rope_scaling` by `gguf_config_fields`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from luodi.errors import UnsupportedArchitectureError
from luodi.loading.gguf import ArchMetadata
from luodi.models.base import CausalLM
from luodi.models.config import ModelConfig
from luodi.models.family import Family
from luodi.models.gguf_spec import GGUFSpec, Weights
from luodi.models.layers import (
    AttentionBackend, GatedMLP, LayerNorms, Norm, RMSNorm, RotaryEmbedding, add_rms_norm, rotary_attention,
)

Rope = tuple[torch.Tensor, torch.Tensor]


class LlamaAttention(nn.Module):
    """Declares, beside its projections, what the native stack reads: `q_norm`/`k_norm` (per-head
    norms, None here), `rotary_dim`, `sliding_window` and `rope_index` (which of the backbone's
    RoPE tables it takes)."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.rotary_dim = config.rotary_dim
        self.scale = config.attention_scale
        self.sliding_window = config.sliding_window if config.is_sliding_layer(layer_idx) else None
        self.rope_index = 0
        self.q_norm: Norm | None = None
        self.k_norm: Norm | None = None
        has_bias = self.has_qkv_bias(config)
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_dim, bias=has_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=has_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=has_bias)
        self.o_proj = nn.Linear(q_dim, config.hidden_size, bias=self.has_o_bias(config))

    def has_qkv_bias(self, config: ModelConfig) -> bool:
        return config.attention_bias

    def has_o_bias(self, config: ModelConfig) -> bool:
        return config.attention_bias

    def forward(self, x: torch.Tensor, rope: Rope, kv: AttentionBackend) -> torch.Tensor:
        out = rotary_attention(
            self, x, rope, kv, q_norm=self.q_norm, k_norm=self.k_norm, sliding_window=self.sliding_window
        )
        return self.o_proj(out)


class LlamaDecoderLayer(nn.Module):
    attention_class: type[LlamaAttention] = LlamaAttention
    norms = LayerNorms()

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = self.attention_class(config, layer_idx)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, rope: Rope, kv: AttentionBackend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden state is residual + x (just x for the first layer, whose residual is None).

        Returns this layer's (MLP output, residual): the sum is its output hidden state. Keeping
        the two apart lets the add join the next norm in one fused op.
        """
        h, residual = add_rms_norm(x, residual, self.input_layernorm)
        h, residual = add_rms_norm(self.self_attn(h, rope, kv), residual, self.post_attention_layernorm)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    layer_class: type[LlamaDecoderLayer] = LlamaDecoderLayer
    native_stack = None  # set by `luodi.models.native_stack.attach` for inference

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.layer_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.rotary_dim, config.rope_theta, config.rope_scaling)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: AttentionBackend) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, hidden]
        rope = self.rotary_emb(positions, x.dtype)
        if self.native_stack is not None and (out := self.native_stack(x, (rope,), kv)) is not None:
            return out
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, kv)
        return add_rms_norm(x, residual, self.norm)[0]


class LlamaForCausalLM(CausalLM):
    model_class = LlamaModel


def unpermute_qk(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py) on q/k rows.

    The converter reorders each head's rows from HF's half-split RoPE layout to GGML's interleaved
    pairs: rows [h, 2, d/2] -> [h, d/2, 2]. This is its inverse.
    """
    rows = weight.shape[0]
    w = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape)


def gguf_sanitize(config: ModelConfig, weights: Weights) -> Iterator[tuple[str, torch.Tensor]]:
    """q/k weights and biases back in HF's row order (the converter permutes both)."""
    for name, tensor in weights:
        if ".self_attn.q_proj." in name:
            tensor = unpermute_qk(tensor, config.num_attention_heads)
        elif ".self_attn.k_proj." in name:
            tensor = unpermute_qk(tensor, config.num_key_value_heads)
        yield name, tensor


def gguf_config_fields(meta: ArchMetadata, common: dict[str, Any]) -> dict[str, Any]:
    """Llama 3.1+'s RoPE scaling, where the file states it only as `rope_freqs.weight`."""
    if common["rope_scaling"] is not None or "rope_freqs.weight" not in meta.f.tensors:
        return {}
    return {"rope_scaling": _llama3_rope_scaling(meta, common["head_dim"])}


def _llama3_rope_scaling(meta: ArchMetadata, head_dim: int) -> dict[str, Any]:
    """HF's `llama3` rope_scaling recovered from the `rope_freqs.weight` tensor of Llama 3.1+ files.

    llama.cpp's converter (LlamaModel.generate_extra_tensors) stores per-frequency divisors instead
    of the parameters: 1 for high frequencies, `factor` for low ones, and in between
    1 / ((1 - s) / factor + s) with s = (L / wavelen - low) / (high - low). s is linear in 1 / wavelen,
    so two in-between frequencies give low and high for a given L (the original context length,
    which the file does not state; 8192 for every Llama 3.x).
    """
    divisors = meta.f.dequantize("rope_freqs.weight").astype(np.float64)
    theta = float(meta.get("rope.freq_base", 10000.0))
    wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor = float(divisors.max())
    middle = (divisors > 1 + 1e-6) & (divisors < factor - 1e-6)
    if factor <= 1.0 or middle.sum() < 2 or len(divisors) != len(wavelen):
        raise UnsupportedArchitectureError(
            f"{meta.f.path} has RoPE frequency factors (rope_freqs.weight) that are not Llama 3 style; "
            "Luodi cannot express them as an HF rope_scaling"
        )
    original = int(meta.get("rope.scaling.original_context_length") or 8192)
    smooth = (1 / divisors[middle] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(1 / wavelen[middle], smooth, 1)  # s = (L/(h-l)) / w - l/(h-l)
    low = -intercept * original / slope
    high = low + original / slope
    return {
        "rope_type": "llama3",
        "factor": round(factor, 4),
        "low_freq_factor": round(float(low), 4),
        "high_freq_factor": round(float(high), 4),
        "original_max_position_embeddings": original,
    }


GGUF = GGUFSpec(("llama",), config_fields=gguf_config_fields, sanitize=gguf_sanitize,
                config_tensors=frozenset({"rope_freqs.weight"}))
FAMILY = Family("llama", "LlamaForCausalLM", LlamaForCausalLM, gguf=GGUF)
