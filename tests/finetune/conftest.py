"""A tiny random-weight Llama written in Luodi's saved format (fp32), with a word-level tokenizer.

The fine-tuning tests load it the way a user's model is loaded (`load_for_training` on a
directory), so adapters, merging and the loader are exercised end to end in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from luodi.loading.tokenizer import Tokenizer
from luodi.models.config import ModelConfig, config_to_hf_dict
from luodi.models.llama import LlamaForCausalLM
from luodi.quant.format import QuantSpec, save_model

TINY = ModelConfig(
    model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
    tie_word_embeddings=True, eos_token_ids=(1,),
)


def tiny_tokenizer() -> Tokenizer:
    vocab = {f"w{i}": i for i in range(TINY.vocab_size)}
    backend = Backend(models.WordLevel(vocab=vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, bos_token=None, eos_tokens=["w1"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY)
    model.tie_weights()
    path = tmp_path_factory.mktemp("tiny-llama")
    save_model(model, tiny_tokenizer(), config_to_hf_dict(TINY), path, QuantSpec(scheme="none"), dtype=torch.float32)
    return path
