"""Qwen3 (dense): the Llama architecture plus a per-head RMSNorm on q and k before RoPE."""

from __future__ import annotations

from luodi.models.config import ModelConfig
from luodi.models.family import Family
from luodi.models.gguf_spec import GGUFSpec
from luodi.models.layers import RMSNorm
from luodi.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_class = Qwen3Attention


class Qwen3Model(LlamaModel):
    layer_class = Qwen3DecoderLayer


class Qwen3ForCausalLM(LlamaForCausalLM):
    model_class = Qwen3Model


# GGUF: llama.cpp's names (q/k norms `attn_q_norm`, `attn_k_norm`), stored as HF has them.
FAMILY = Family("qwen3", "Qwen3ForCausalLM", Qwen3ForCausalLM, gguf=GGUFSpec(("qwen3",)))
