"""Qwen3 (dense): the Llama architecture plus a per-head RMSNorm on q and k before RoPE."""

from __future__ import annotations

import torch

from luodi.models.config import ModelConfig
from luodi.models.layers import AttentionBackend, RMSNorm, apply_rope
from luodi.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], kv: AttentionBackend) -> torch.Tensor:
        q, k, v = self.project_qkv(x)
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        out = kv.attend(self.layer_idx, q, k, v, scale=self.scale)
        return self.o_proj(out.reshape(x.shape[0], -1))


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_class = Qwen3Attention


class Qwen3Model(LlamaModel):
    layer_class = Qwen3DecoderLayer


class Qwen3ForCausalLM(LlamaForCausalLM):
    model_class = Qwen3Model
