"""Llama family (Llama 2/3, SmolLM2, TinyLlama, Mistral): HF `LlamaForCausalLM`, parameter names kept.

The model sees flattened tokens of a whole batch — `input_ids` and `positions` of shape [T] — and
reaches its KV cache only through the `AttentionBackend` it is handed; it knows nothing of
requests. Qwen2 and Qwen3 reuse these classes with their one difference each.
"""

from __future__ import annotations

import torch
from torch import nn

from luodi.models.base import CausalLM
from luodi.models.config import ModelConfig
from luodi.models.layers import AttentionBackend, GatedMLP, RMSNorm, RotaryEmbedding, apply_rope, project_qkv


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.attention_scale
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

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, H, D], k and v [T, Hkv, D]."""
        return project_qkv(self, x)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], kv: AttentionBackend) -> torch.Tensor:
        q, k, v = self.project_qkv(x)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = kv.attend(self.layer_idx, q, k, v, scale=self.scale)
        return self.o_proj(out.reshape(x.shape[0], -1))


class LlamaDecoderLayer(nn.Module):
    attention_class: type[LlamaAttention] = LlamaAttention

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = self.attention_class(config, layer_idx)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], kv: AttentionBackend) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    layer_class: type[LlamaDecoderLayer] = LlamaDecoderLayer

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.layer_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: AttentionBackend) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, hidden]
        rope = self.rotary_emb(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, kv)
        return self.norm(x)


class LlamaForCausalLM(CausalLM):
    model_class = LlamaModel
