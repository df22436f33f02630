"""`config_to_hf_dict` writes what `config_from_hf_dict` reads back unchanged, for every family."""

from __future__ import annotations

import json

import pytest

from luodi.models.config import config_from_hf_dict, config_to_hf_dict

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=16384)
CONFIGS = {
    "llama3": lambda t: t.LlamaConfig(**COMMON, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}),
    "qwen2": lambda t: t.Qwen2Config(**COMMON, tie_word_embeddings=True),
    "qwen3": lambda t: t.Qwen3Config(**COMMON, head_dim=32),
    "phi3-longrope-partial": lambda t: t.Phi3Config(
        **COMMON, original_max_position_embeddings=4096, partial_rotary_factor=0.75, sliding_window=2047,
        rope_scaling={"type": "su", "short_factor": [1.0] * 6, "long_factor": [4.0] * 6}),
    "gemma3": lambda t: t.Gemma3TextConfig(**COMMON, head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
                                           final_logit_softcapping=30.0),
}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_hf_dict_round_trip(family):
    config = config_from_hf_dict(CONFIGS[family](transformers).to_dict())
    again = config_from_hf_dict(json.loads(json.dumps(config_to_hf_dict(config))))
    assert again == config
