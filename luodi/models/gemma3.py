"""Gemma 3 (text): HF `Gemma3ForCausalLM`, parameter names kept.

What sets it apart from Llama: the embedding is scaled by sqrt(hidden_size); RMSNorm weights are
offsets (1 + w); every block has four norms (pre/post attention, pre/post MLP); q and k get a
per-head norm; attention is interleaved local (sliding window, its own RoPE base) and global;
the MLP uses tanh-approximated GELU; scores are scaled by `query_pre_attn_scalar`.
"""

from __future__ import annotations

import torch
from torch import nn

from luodi.models.base import CausalLM
from luodi.models.config import ModelConfig
from luodi.models.llama import LlamaAttention
from luodi.models.layers import (
    AttentionBackend, GatedMLP, GemmaRMSNorm, RotaryEmbedding, apply_rope, project_qkv,
)

Rope = tuple[torch.Tensor, torch.Tensor]


class Gemma3Attention(LlamaAttention):
    """Llama's projections plus per-head q/k norms, and a sliding window on local layers."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.is_sliding = config.is_sliding_layer(layer_idx)
        self.sliding_window = config.sliding_window if self.is_sliding else None
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: Rope, kv: AttentionBackend) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = project_qkv(self, x)  # [T, H, D], [T, Hkv, D], [T, Hkv, D]
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        out = kv.attend(self.layer_idx, q, k, v, scale=self.scale, sliding_window=self.sliding_window)
        return self.o_proj(out.reshape(t, -1))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        dim, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Gemma3Attention(config, layer_idx)
        self.mlp = GatedMLP(dim, config.intermediate_size, config.hidden_act)
        self.input_layernorm = GemmaRMSNorm(dim, eps)
        self.post_attention_layernorm = GemmaRMSNorm(dim, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(dim, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rope: Rope, kv: AttentionBackend) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, kv))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3Model(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_scale = config.hidden_size**0.5
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        local_base = config.rope_local_base_freq or 10000.0
        self.rotary_emb_local = RotaryEmbedding(config.head_dim, local_base)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: AttentionBackend) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, hidden]
        # HF casts the scale to the weight dtype before multiplying.
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        rope_global = self.rotary_emb(positions, x.dtype)
        rope_local = self.rotary_emb_local(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, rope_local if layer.self_attn.is_sliding else rope_global, kv)
        return self.norm(x)


class Gemma3ForCausalLM(CausalLM):
    model_class = Gemma3Model
