"""Mistral: Llama's modules, with one sliding window over every layer when its config sets one.

No GGUF spec: llama.cpp's converter writes Mistral as architecture "llama" (LlamaModel, no window
in the metadata), so a Mistral GGUF loads as the llama family.
"""

from __future__ import annotations

from typing import Any

from luodi.models.config import ModelConfig
from luodi.models.family import Family, every_layer_sliding
from luodi.models.llama import LlamaForCausalLM


def hf_fields(config: ModelConfig) -> dict[str, Any]:
    return {"sliding_window": config.sliding_window}


FAMILY = Family("mistral", "MistralForCausalLM", LlamaForCausalLM, config_fields=every_layer_sliding,
                hf_fields=hf_fields)
