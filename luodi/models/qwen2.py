"""Qwen2 / Qwen2.5: the Llama architecture with a bias on the q/k/v projections (none on o_proj)."""

from __future__ import annotations

from luodi.models.config import ModelConfig
from luodi.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class Qwen2Attention(LlamaAttention):
    def has_qkv_bias(self, config: ModelConfig) -> bool:
        return True

    def has_o_bias(self, config: ModelConfig) -> bool:
        return False


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_class = Qwen2Attention


class Qwen2Model(LlamaModel):
    layer_class = Qwen2DecoderLayer


class Qwen2ForCausalLM(LlamaForCausalLM):
    model_class = Qwen2Model
