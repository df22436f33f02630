"""The bundled GGUF models against Hugging Face transformers loading the very same file.

Both run in fp32 on identical prompt token ids; 32 greedy tokens must be identical, or part only
at a near tie (the reference's top-2 gap < 0.1 and our token its second choice).
"""

from __future__ import annotations

import pytest
import torch

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.loading.gguf import GGUFFile
from luodi.loading.tokenizer import Tokenizer
from luodi.models.loader import load_config_and_weights
from luodi.models.registry import build_model
from model_cache import pulled_model_path
from oracles import assert_greedy_match

transformers = pytest.importorskip("transformers")

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "请用一句话介绍一下长城。",
    "List three prime numbers and explain why each is prime, step by step, in detail. " * 3,
]
COMPLETION_PROMPTS = [
    "The quick brown fox",
    "In 1969, the first humans",
    "def fibonacci(n):\n",
]


def _load_both(name: str):
    path = pulled_model_path(name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    ).eval()
    config, weights, _ = load_config_and_weights(path)
    ours = build_model(config, weights, dtype=torch.float32, device=torch.device("cpu"))
    return hf, ours, Tokenizer.from_gguf(GGUFFile(path))


def _check_greedy(hf, ours, prompts_ids: list[list[int]]) -> None:
    engine = LLMEngine(ours, config=EngineConfig(max_model_len=1024))
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    got = engine.generate(prompts_ids, params)  # batched, as the engine serves them
    for ids, tokens in zip(prompts_ids, got, strict=True):
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, output_logits=True,
                              return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
        ref = out.sequences[0, len(ids):].tolist()
        assert_greedy_match(tokens, ref, torch.cat(out.logits))


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers():
    hf, ours, tokenizer = _load_both("smollm2-135m-instruct")
    prompts = [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
    _check_greedy(hf, ours, prompts)


@pytest.mark.slow
def test_gemma3_greedy_matches_transformers():
    hf, ours, tokenizer = _load_both("gemma3-270m")
    prompts = [tokenizer.encode(p) for p in COMPLETION_PROMPTS]
    _check_greedy(hf, ours, prompts)
