"""Each model family against Hugging Face transformers on a tiny random-weight model.

The oracle: transformers' own implementation of the same architecture, saved as safetensors and
loaded by Luodi from that directory. fp32 logits must agree to 1e-4; 32 greedy tokens must be
identical (or part only at a near tie).
"""

from __future__ import annotations

import pytest
import torch

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.models.loader import load_config_and_weights
from luodi.models.reference import full_logits
from luodi.models.registry import build_model
from oracles import assert_greedy_match

transformers = pytest.importorskip("transformers")

COMMON = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
)


PHI3_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # Phi3Config's defaults lie past this vocab
PROMPT_LEN = {"phi3-longrope": 40, "phi3-longrope-partial": 40}  # past original_max_position_embeddings


def _factors(count: int, first: float) -> list[float]:
    return [first + 0.25 * i for i in range(count)]


def _configs():
    t = transformers
    return {
        "llama": t.LlamaConfig(**COMMON),
        "llama3-rope-scaling": t.LlamaConfig(**{**COMMON, "max_position_embeddings": 16384}, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}),
        "llama-tied": t.LlamaConfig(**COMMON, tie_word_embeddings=True),
        "mistral": t.MistralConfig(**COMMON, sliding_window=None),
        "mistral-window": t.MistralConfig(**COMMON, sliding_window=8),
        "qwen2": t.Qwen2Config(**COMMON, tie_word_embeddings=True),
        "qwen3": t.Qwen3Config(**COMMON, head_dim=32),
        "phi3": t.Phi3Config(**COMMON, **PHI3_IDS),
        "phi3-window": t.Phi3Config(**COMMON, **PHI3_IDS, sliding_window=8),
        # LongRoPE past the original context (so the long factors and the attention factor apply),
        # as "su" like Phi-3-128k's config.json, and with partial rotary like Phi-4-mini's.
        "phi3-longrope": t.Phi3Config(**COMMON, **PHI3_IDS, original_max_position_embeddings=32, rope_scaling={
            "type": "su", "short_factor": _factors(8, 1.0), "long_factor": _factors(8, 3.0)}),
        "phi3-longrope-partial": t.Phi3Config(
            **COMMON, **PHI3_IDS, original_max_position_embeddings=32, partial_rotary_factor=0.5,
            rope_scaling={"type": "longrope", "short_factor": _factors(4, 1.0), "long_factor": _factors(4, 5.0)}),
        "gemma3": t.Gemma3TextConfig(**COMMON, head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
                                     layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    }


CONFIGS = _configs()


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
    length = PROMPT_LEN.get(name, 12)
    prompt = torch.randint(0, COMMON["vocab_size"], (length,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = hf_model.generate(prompt[None], max_new_tokens=32, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    ref_tokens = out.sequences[0, len(prompt):].tolist()
    ref_logits = torch.cat(out.logits)
    engine = LLMEngine(ours, config=EngineConfig(block_size=4))
    [got] = engine.generate([prompt.tolist()], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    assert_greedy_match(got, ref_tokens, ref_logits)
