"""Each model family against Hugging Face transformers on a tiny random-weight model.

The oracle: transformers' own implementation of the same architecture, saved as safetensors and
loaded by Luodi from that directory. fp32 logits must agree to 1e-4; 32 greedy tokens must be
identical (or part only at a near tie).
"""

from __future__ import annotations

import copy

import pytest
import torch

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.models.loader import load_config_and_weights
from luodi.models.reference import full_logits
from luodi.models.registry import build_model
from families import FAMILIES, LONGROPE_ORIGINAL, is_longrope
from oracles import assert_greedy_match

transformers = pytest.importorskip("transformers")

COMMON = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
)


CONFIGS = {name: build(transformers, **COMMON) for name, build in FAMILIES.items()}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(name, transformers model, Luodi model loaded from the saved safetensors directory)."""
    torch.manual_seed(0)
    hf_config = CONFIGS[request.param]
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    path = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(path, safe_serialization=True)
    config, weights, _ = load_config_and_weights(path)
    ours = build_model(config, weights, dtype=torch.float32, device=torch.device("cpu"))
    return request.param, hf_model, ours


def test_logits_match_transformers(pair):
    _, hf_model, ours = pair
    ids = torch.randint(0, COMMON["vocab_size"], (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_model(ids[None]).logits[0]
    got = full_logits(ours, ids.tolist())
    assert (got - ref).abs().max().item() < 1e-4


def test_greedy_tokens_match_transformers(pair):
    name, hf_model, ours = pair
    length = LONGROPE_ORIGINAL + 8 if is_longrope(name) else 12
    prompt = torch.randint(0, COMMON["vocab_size"], (length,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = hf_model.generate(prompt[None], max_new_tokens=32, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    ref_tokens = out.sequences[0, len(prompt):].tolist()
    ref_logits = torch.cat(out.logits)
    engine = LLMEngine(ours, config=EngineConfig(block_size=4))
    [got] = engine.generate([prompt.tolist()], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    assert_greedy_match(got, ref_tokens, ref_logits)


def test_longrope_takes_the_long_factors_for_short_prompts(tmp_path):
    """Luodi picks LongRoPE's factors once, by the context window (past the original: long);
    transformers picks by sequence length. The oracle for a short prompt is therefore transformers
    with the long factors in place of the short ones."""
    torch.manual_seed(0)
    hf_config = CONFIGS["phi3-longrope"]
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    long_config = copy.deepcopy(hf_config)
    long_config.rope_parameters["short_factor"] = list(long_config.rope_parameters["long_factor"])
    hf_long = transformers.AutoModelForCausalLM.from_config(long_config, attn_implementation="eager").eval()
    hf_long.load_state_dict(hf_model.state_dict())
    config, weights, _ = load_config_and_weights(tmp_path)
    ours = build_model(config, weights, dtype=torch.float32, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, COMMON["vocab_size"], (LONGROPE_ORIGINAL // 2,), generator=generator)
    got = full_logits(ours, ids.tolist())
    with torch.no_grad():
        assert (got - hf_long(ids[None]).logits[0]).abs().max().item() < 1e-4
        assert (got - hf_model(ids[None]).logits[0]).abs().max().item() > 1e-2  # the short factors differ
