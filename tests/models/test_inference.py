"""`prepare_for_inference` (fused projections, packed bf16 kernels) must not change the model's output."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from luodi.kernels import lowbit
from luodi.kernels.linear import PackedEmbedding, PackedLinear, can_pack_bf16
from luodi.models.config import ModelConfig
from luodi.models.gemma3 import Gemma3ForCausalLM
from luodi.models.inference import prepare_for_inference
from luodi.models.qwen2 import Qwen2ForCausalLM
from luodi.models.reference import full_logits

QWEN2 = ModelConfig(model_type="qwen2", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=True)
GEMMA3 = ModelConfig(model_type="gemma3_text", vocab_size=128, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                     hidden_act="gelu_pytorch_tanh", sliding_window=4, query_pre_attn_scalar=16,
                     layer_types=("sliding_attention", "full_attention"), rope_local_base_freq=10000.0)


@pytest.mark.parametrize("cls, config", [(Qwen2ForCausalLM, QWEN2), (Gemma3ForCausalLM, GEMMA3)])
def test_fused_projections_keep_fp32_logits(cls, config):
    torch.manual_seed(0)
    model = cls(config).eval()
    ids = torch.randint(0, 128, (20,)).tolist()
    before = full_logits(model, ids)
    fused = prepare_for_inference(copy.deepcopy(model))
    assert not hasattr(fused.model.layers[0].self_attn, "q_proj")
    assert torch.allclose(full_logits(fused, ids), before, atol=1e-5)


@pytest.mark.skipif(not can_pack_bf16(), reason="this CPU has no oneDNN bf16 support")
def test_packed_bf16_linear_equals_plain_bf16_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=True).to(torch.bfloat16)
    packed = PackedLinear(linear)
    for rows in (1, 7, 64):
        x = torch.randn(rows, 64, dtype=torch.bfloat16)
        torch.testing.assert_close(packed(x), linear(x), rtol=0.02, atol=0.02)


@pytest.mark.skipif(not lowbit.native_available(), reason=lowbit.native_unavailable_reason())
def test_a_tied_embedding_reads_the_packed_lm_head():
    """bf16, tied: the table is kept once (in the lm_head's tiles) and every row reads back exactly."""
    torch.manual_seed(0)
    config = dataclasses.replace(GEMMA3, vocab_size=200, tie_word_embeddings=True)  # 200: a partial tile
    model = Gemma3ForCausalLM(config).to(torch.bfloat16).eval()
    model.tie_weights()
    table = model.model.embed_tokens.weight.detach().clone()
    ids = torch.randint(0, 200, (24,)).tolist()
    before = full_logits(model, ids)
    prepared = prepare_for_inference(model)
    embedding = prepared.model.embed_tokens
    assert isinstance(embedding, PackedEmbedding)
    assert embedding.tiles.data_ptr() == prepared.lm_head.native.weight.data_ptr()
    all_ids = torch.arange(200)
    assert torch.equal(embedding(all_ids), table)
    assert torch.equal(embedding(all_ids.view(10, 20)), table.view(10, 20, -1))
    torch.testing.assert_close(full_logits(prepared, ids), before, rtol=0.05, atol=0.05)
