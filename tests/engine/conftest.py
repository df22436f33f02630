"""A tiny random-weight Llama shared by the engine tests (speed and weights don't matter here)."""

from __future__ import annotations

import pytest
import torch

from luodi.models.config import ModelConfig
from luodi.models.llama import LlamaForCausalLM

TINY = ModelConfig(
    model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
)


@pytest.fixture(scope="session")
def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY).eval()
    with torch.no_grad():  # spread the logits so greedy choices are rarely near ties
        model.lm_head.weight.mul_(20)
    return model
