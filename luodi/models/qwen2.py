"""Qwen2 / Qwen2.5: the Llama architecture with a bias on the q/k/v projections (none on o_proj)."""

from __future__ import annotations

from typing import Any

from luodi.models.config import ModelConfig
from luodi.models.family import Family
from luodi.models.gguf_spec import GGUFSpec
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


def config_fields(raw: dict[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    return {"attention_bias": bool(raw.get("attention_bias", True))}


# GGUF: llama.cpp's names, stored as HF has them (the q/k/v biases are `attn_q.bias`, ...).
FAMILY = Family("qwen2", "Qwen2ForCausalLM", Qwen2ForCausalLM, config_fields=config_fields,
                gguf=GGUFSpec(("qwen2",)))
