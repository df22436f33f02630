"""The compiled forward pass (`--compile`) against the eager one: same greedy tokens."""

from __future__ import annotations

import copy

import pytest
import torch

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.reference import full_logits
from luodi.engine.sampling import SamplingParams
from luodi.models.config import ModelConfig
from luodi.models.llama import LlamaForCausalLM
from luodi.models.inference import prepare_for_inference
from oracles import assert_greedy_match

TINY = ModelConfig(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


@pytest.mark.slow
def test_compiled_model_generates_the_eager_tokens():
    torch.manual_seed(0)
    eager = LlamaForCausalLM(TINY).to(torch.bfloat16).eval()
    with torch.no_grad():
        eager.lm_head.weight.mul_(20)
    compiled = prepare_for_inference(copy.deepcopy(eager), compile=True)
    prompts = [[1, 2, 3, 4, 5], list(range(30, 70)), [200] * 9]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    expected = LLMEngine(eager, config=EngineConfig(block_size=4)).generate(prompts, params)
    got = LLMEngine(compiled, config=EngineConfig(block_size=4)).generate(prompts, params)
    for prompt, g, e in zip(prompts, got, expected, strict=True):
        logits = full_logits(eager, prompt + e)[len(prompt) - 1 : -1]
        assert_greedy_match(g, e, logits)
