"""The model families the tests share: one case per family variant, as a transformers config.

Each case builds its HF config (`transformers.XConfig`) from the tiny dimensions a test passes;
tests that compare against transformers use it as is, and tests of Luodi's own paths (the native
stack) read it through `config_from_hf_dict`, so every family test covers the same variants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from luodi.models.config import ModelConfig, config_from_hf_dict

HFConfig = Any  # a transformers PretrainedConfig
PHI3_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # Phi3Config's defaults lie past a tiny vocab
LONGROPE_ORIGINAL = 32  # original_max_position_embeddings of the LongRoPE cases: prompts must pass it


def _factors(count: int, first: float) -> list[float]:
    return [first + 0.25 * i for i in range(count)]


def _head_dim(dims: dict[str, Any]) -> int:
    return dims.get("head_dim") or dims["hidden_size"] // dims["num_attention_heads"]


FAMILIES: dict[str, Callable[..., HFConfig]] = {
    "llama": lambda t, **d: t.LlamaConfig(**d),
    "llama3-rope-scaling": lambda t, **d: t.LlamaConfig(
        **{**d, "max_position_embeddings": 16384}, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}),
    "llama-tied": lambda t, **d: t.LlamaConfig(**d, tie_word_embeddings=True),
    "mistral": lambda t, **d: t.MistralConfig(**d, sliding_window=None),
    "mistral-window": lambda t, **d: t.MistralConfig(**d, sliding_window=8),
    "qwen2": lambda t, **d: t.Qwen2Config(**d, tie_word_embeddings=True),
    "qwen3": lambda t, **d: t.Qwen3Config(**{**d, "head_dim": 32}),
    "gemma3": lambda t, **d: t.Gemma3TextConfig(
        **{**d, "head_dim": 32}, sliding_window=8, query_pre_attn_scalar=24, final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention"] * (d["num_hidden_layers"] // 2)
        + ["sliding_attention"] * (d["num_hidden_layers"] % 2)),
    "phi3": lambda t, **d: t.Phi3Config(**d, **PHI3_IDS),
    "phi3-window": lambda t, **d: t.Phi3Config(**d, **PHI3_IDS, sliding_window=8),
    # LongRoPE past the original context (so the long factors and the attention factor apply),
    # as "su" like Phi-3-128k's config.json, and with partial rotary like Phi-4-mini's.
    "phi3-longrope": lambda t, **d: t.Phi3Config(
        **d, **PHI3_IDS, original_max_position_embeddings=LONGROPE_ORIGINAL, rope_scaling={
            "type": "su", "short_factor": _factors(_head_dim(d) // 2, 1.0),
            "long_factor": _factors(_head_dim(d) // 2, 3.0)}),
    "phi3-longrope-partial": lambda t, **d: t.Phi3Config(
        **d, **PHI3_IDS, original_max_position_embeddings=LONGROPE_ORIGINAL, partial_rotary_factor=0.5,
        rope_scaling={"type": "longrope", "short_factor": _factors(_head_dim(d) // 4, 1.0),
                      "long_factor": _factors(_head_dim(d) // 4, 5.0)}),
}


def is_longrope(name: str) -> bool:
    return "longrope" in name


def luodi_config(transformers: Any, name: str, **dims: Any) -> ModelConfig:
    """The family case `name` as Luodi reads it."""
    return config_from_hf_dict(FAMILIES[name](transformers, **dims).to_dict())
