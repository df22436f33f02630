"""GPTQ for INT4: against round-to-nearest, the textbook OBS update, and hand-computed statistics.

Oracles:
- with a diagonal Gram matrix no column's error can be offset by another, so GPTQ must store
  exactly what `quantize_int4` stores;
- the blocked, Cholesky-based pass must agree with the unblocked update written from the paper's
  formula — after rounding column i, the remaining columns F move by
  -e · [H_F⁻¹]_{i,F} / [H_F⁻¹]_{i,i}, with H_F⁻¹ inverted afresh (float64) at every step;
- on correlated inputs its output error `‖X (W - Ŵ)ᵀ‖²` must be well under round-to-nearest's;
- calibration Gram matrices are recomputed from the layer input, which for layer 0's q_proj is
  `input_layernorm(embed(ids))`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from luodi.errors import InvalidParameterError
from luodi.models.inference import fuse_projections
from luodi.quant.linear import Int4Linear, QuantEmbedding
from luodi.quant.weight_only import (
    INT4_LEVELS,
    dequantize_int4,
    int4_grid_steps,
    quantize_int4,
    quantize_int4_groups,
)
from luodi.quant_tools import gptq
from luodi.quant_tools.gptq import DAMPING, collect_input_grams, gptq_int4
from luodi.quant_tools.quantize import QuantizeOptions, quantize_modules

from test_smoothquant import sequences, tiny_model


def correlated_inputs(k: int, num_tokens: int = 2048, seed: int = 0) -> torch.Tensor:
    """[T, K] rows mixing 16 latent factors plus a little noise, with uneven channel scales, as
    normalized hidden states look."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(num_tokens, 16, generator=gen)
    mixing = torch.randn(16, k, generator=gen)
    noise = 0.3 * torch.randn(num_tokens, k, generator=gen)
    return (latent @ mixing + noise) * torch.rand(k, generator=gen).add(0.5)


def random_weight(n: int, k: int, seed: int = 1) -> torch.Tensor:
    return 0.05 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def gram_of(x: torch.Tensor) -> torch.Tensor:
    return x.T @ x / x.shape[0]


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return (x.double() @ (w - w_hat).double().T).pow(2).sum().item()


def textbook_gptq(w: torch.Tensor, gram: torch.Tensor, group_size: int) -> torch.Tensor:
    """Unblocked OBS rounding in float64, H_F inverted afresh at each column; the dequantized Ŵ."""
    w = w.double().clone()
    n, k = w.shape
    h = gram.double() + DAMPING * gram.diagonal().double().mean() * torch.eye(k, dtype=torch.float64)
    w_hat = torch.empty(n, k, dtype=torch.float64)
    for i in range(k):
        if i % group_size == 0:
            _, scales, mins = quantize_int4_groups(w[:, i:i + group_size].float().unsqueeze(1), (n, k))
            scale, low = scales[:, 0].double(), mins[:, 0].double()
        q_i = torch.round((w[:, i] - low) / scale).clamp(0, INT4_LEVELS)
        w_hat[:, i] = q_i * scale + low
        error = w[:, i] - w_hat[:, i]
        h_inv = torch.linalg.inv(h[i:, i:])  # the columns not yet rounded, this one first
        w[:, i:] -= error[:, None] * h_inv[0][None, :] / h_inv[0, 0]
    return w_hat


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_diagonal_gram_stores_round_to_nearest(group_size):
    w = random_weight(24, 256)
    gram = torch.diag(torch.rand(256, generator=torch.Generator().manual_seed(2)) + 0.1)
    for ours, rtn in zip(gptq_int4(w, gram, group_size), quantize_int4(w, group_size), strict=True):
        assert torch.equal(ours, rtn)


@pytest.mark.parametrize("group_size,k", [(32, 320), (64, 320), (128, 384)])
def test_blocked_pass_matches_the_textbook_update(group_size, k):
    # blocks of 128 columns (the last one short for k = 320): the lazy cross-block update is used
    x, w = correlated_inputs(k), random_weight(16, k)
    gram = gram_of(x)
    q, scales, mins = gptq_int4(w, gram, group_size)
    w_hat, w_ref = dequantize_int4(q, scales, mins, group_size), textbook_gptq(w, gram, group_size).float()
    # float32 vs float64: a rare rounding tie may flip a level, and the feedback carries it on
    assert (w_hat == w_ref).float().mean().item() > 0.95
    assert output_error(x, w, w_hat) == pytest.approx(output_error(x, w, w_ref), rel=0.02)


def test_error_feedback_cuts_the_output_error_of_correlated_inputs():
    x, w = correlated_inputs(256), random_weight(64, 256)
    q, scales, mins = gptq_int4(w, gram_of(x), 32)
    rtn = output_error(x, w, dequantize_int4(*quantize_int4(w, 32), 32))
    ours = output_error(x, w, dequantize_int4(q, scales, mins, 32))
    assert ours < 0.5 * rtn


def test_inputs_never_seen_get_zero_weight():
    x, w = correlated_inputs(64), random_weight(8, 64)
    x[:, 5] = 0.0
    q, scales, mins = gptq_int4(w, gram_of(x), 32)
    w_hat = dequantize_int4(q, scales, mins, 32)
    assert torch.isfinite(w_hat).all()
    assert w_hat[:, 5].abs().max() <= scales[:, 0].float().max() / 2  # rounded from 0, not from w


def test_gram_shape_and_group_size_are_checked():
    w = random_weight(8, 64)
    with pytest.raises(InvalidParameterError, match=r"\[64, 64\] input Gram"):
        gptq_int4(w, torch.eye(32), 32)
    with pytest.raises(InvalidParameterError, match="group size"):
        gptq_int4(w, torch.eye(64), 48)


# -- calibration statistics ------------------------------------------------------------------------


def test_grams_match_the_layer_input():
    model = tiny_model("llama")
    seqs = sequences()
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj",
             "lm_head"]
    grams = collect_input_grams(model, names, seqs)
    with torch.no_grad():
        embedded = torch.cat([model.model.embed_tokens(torch.tensor(seq)) for seq in seqs])
        inputs = model.model.layers[0].input_layernorm(embedded)  # [T, K]
    torch.testing.assert_close(grams["model.layers.0.self_attn.q_proj"], gram_of(inputs), rtol=1e-5, atol=1e-6)
    assert torch.equal(grams["model.layers.0.self_attn.k_proj"], grams["model.layers.0.self_attn.q_proj"])
    assert grams["model.layers.1.mlp.down_proj"].shape == (128, 128)
    assert grams["lm_head"].shape == (64, 64)


def test_grams_taken_over_several_passes_are_the_same(monkeypatch):
    model = tiny_model("qwen2", num_kv_heads=4)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.1.mlp.up_proj",
             "lm_head"]
    together = collect_input_grams(model, names, sequences(2, 12))
    forward_calls, last_down_calls = [], []
    model.register_forward_pre_hook(lambda module, args: forward_calls.append(1))
    last_down = model.model.layers[-1].mlp.down_proj  # after layer 1's up_proj, before the lm_head
    last_down.register_forward_pre_hook(lambda module, args: last_down_calls.append(1))
    monkeypatch.setattr(gptq, "GRAM_BUDGET_BYTES", 1)  # one linear per pass
    apart = collect_input_grams(model, names, sequences(2, 12))
    assert len(forward_calls) == 2 * len(names)
    assert len(last_down_calls) == 2  # each pass stops at its linear: only the lm_head's gets that far
    for name in names:
        torch.testing.assert_close(apart[name], together[name], rtol=1e-6, atol=0)


def test_grams_need_a_sequence():
    with pytest.raises(InvalidParameterError, match="non-empty"):
        collect_input_grams(tiny_model("llama"), ["lm_head"], [[]])


# -- wiring into quantize_modules ------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])  # untied lm_head | tied table
def test_quantize_modules_rounds_each_layer_with_its_gram(model_type):
    model = tiny_model(model_type)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    grams = collect_input_grams(model, names, sequences(4, 32))
    original = copy.deepcopy(model)
    quantize_modules(model, QuantizeOptions(scheme="int4", scale_bits=8), grams=grams)

    def gptq(weight):  # the default: grids on the lattice of 8-bit codes
        return dequantize_int4(*gptq_int4(weight, grams[name], 32, int4_grid_steps(weight, 32)), 32)

    name = "model.layers.1.mlp.down_proj"
    assert isinstance(model.get_submodule(name), Int4Linear)
    assert torch.equal(model.get_submodule(name).dequantize(), gptq(original.get_submodule(name).weight))
    name = "lm_head"
    assert torch.equal(model.lm_head.dequantize(), gptq(original.lm_head.weight))
    table = model.model.embed_tokens
    assert isinstance(table, QuantEmbedding)
    if model_type == "gemma3_text":  # tied: the table is the lm_head, rounded for the logits
        assert table.table is model.lm_head
    else:  # an input-only table has no matmul to feed back into: round-to-nearest
        weight = original.model.embed_tokens.weight
        rtn = quantize_int4(weight, 32, int4_grid_steps(weight, 32))
        assert torch.equal(table.table.dequantize(), dequantize_int4(*rtn, 32))


def test_auto_scale_bits_keep_fp16_grids_where_weights_sit_on_a_4_bit_grid():
    """`--scale-bits auto`: a layer whose weights are already 4-bit (as in a Q4_1 GGUF) keeps fp16
    grids, which recover it, and so do the projections loading fuses with it (q/k/v, gate/up); the
    float layers take 8-bit codes. The model then loads with its projections fused."""
    model = tiny_model("llama")
    on_grid = ("model.layers.0.self_attn.k_proj", "model.layers.1.mlp.up_proj")
    with torch.no_grad():
        for name in on_grid:
            weight = model.get_submodule(name).weight
            weight.copy_(dequantize_int4(*quantize_int4(weight, 32), 32))
    modules = quantize_modules(model, QuantizeOptions(scheme="int4", method="rtn"))
    fp16 = {name for name, entry in modules.items() if entry["scale_bits"] == 16}
    assert fp16 == {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                    "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"}
    assert model.get_submodule("model.layers.0.self_attn.k_proj").steps is None
    assert model.get_submodule("model.layers.0.self_attn.o_proj").steps is not None
    fuse_projections(model)
    for layer in model.model.layers:
        assert hasattr(layer.self_attn, "qkv_proj") and hasattr(layer.mlp, "gate_up_proj")


def test_layers_stored_differently_are_not_fused():
    """A file may store q/k/v with different scale storage: loading keeps them apart, not fails."""
    model = tiny_model("llama")
    quantize_modules(model, QuantizeOptions(scheme="int4", method="rtn", scale_bits=8))
    attention = model.model.layers[0].self_attn
    attention.k_proj = Int4Linear.from_float(torch.nn.Linear(attention.k_proj.in_features,
                                                             attention.k_proj.out_features), scale_bits=16)
    fuse_projections(model)
    assert hasattr(attention, "k_proj") and not hasattr(attention, "qkv_proj")
    assert hasattr(model.model.layers[1].self_attn, "qkv_proj")


def test_unknown_method_is_refused():
    with pytest.raises(InvalidParameterError, match="--method 'obq'"):
        QuantizeOptions(scheme="int4", method="obq")
