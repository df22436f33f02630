"""Mistral: Llama's modules, with one sliding window over every layer when its config sets one."""

from __future__ import annotations

from typing import Any

from luodi.models.config import ModelConfig
from luodi.models.family import Family, every_layer_sliding
from luodi.models.llama import LlamaForCausalLM


def hf_fields(config: ModelConfig) -> dict[str, Any]:
    return {"sliding_window": config.sliding_window}


FAMILY = Family("mistral", "MistralForCausalLM", LlamaForCausalLM, config_fields=every_layer_sliding,
                hf_fields=hf_fields)
