"""Calibration, SmoothQuant smoothing (fixed and auto α) and AWQ scaling on tiny random models.

Oracles: the smoothing transform is exact in real arithmetic, so float logits must not move beyond
fp32 rounding; the per-group W8A8 error is recomputed here by hand (per-token and per-channel
symmetric int8, float64 matmul) for every α of the grid; calibration statistics are recomputed
from the layer's input, which for layer 0 is `input_layernorm(embed(ids))`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.models.config import ModelConfig
from luodi.models.inference import fuse_projections
from luodi.models.reference import full_logits
from luodi.models.registry import model_class
from luodi.quant.w8a8 import W8A8Linear
from luodi.quant.weight_only import dequantize_int4, quantize_int4
from luodi.quant_tools.calibration import SAMPLE_SEED, collect_activation_stats
from luodi.quant_tools.smoothing import (
    ALPHA_GRID,
    apply_smoothing,
    awq_scale_model,
    smooth_model,
    smoothing_factors,
    smoothing_groups,
)

VOCAB = 96
QKV0 = "model.layers.0.self_attn.qkv"


def tiny_config(model_type: str, num_kv_heads: int = 2) -> ModelConfig:
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=num_kv_heads, head_dim=16)
    if model_type == "gemma3_text":
        return ModelConfig(model_type=model_type, **common, hidden_act="gelu_pytorch_tanh", sliding_window=4,
                           layer_types=("sliding_attention", "full_attention"), rope_local_base_freq=10000.0,
                           query_pre_attn_scalar=16, tie_word_embeddings=True)
    return ModelConfig(model_type=model_type, **common, attention_bias=model_type == "qwen2")


def tiny_model(model_type: str, num_kv_heads: int = 2, outlier: float = 8.0, seed: int = 0) -> nn.Module:
    """Random fp32 weights; each layer's norms give one input channel an `outlier`× larger scale,
    as trained LLMs do, so that smoothing factors are far from 1."""
    config = tiny_config(model_type, num_kv_heads)
    torch.manual_seed(seed)
    model = model_class(config)(config)
    is_gemma = model_type == "gemma3_text"
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.2 * torch.randn_like(param) + (0.0 if is_gemma else 1.0))
            else:
                param.copy_(0.2 * torch.randn_like(param))
        for layer in model.model.layers:
            for name in {layer.norms.input, "post_attention_layernorm", layer.norms.pre_mlp}:
                norm = getattr(layer, name)  # gemma stores (1 + w): plant (1 + w) = outlier
                norm.weight[5] = outlier - (1.0 if is_gemma else 0.0)
    model.tie_weights()
    return model.eval()


def sequences(count: int = 3, length: int = 20, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (length,), generator=gen).tolist() for _ in range(count)]


def logits_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([full_logits(model, seq) for seq in sequences(2, 16, seed=7)])


# -- calibration ----------------------------------------------------------------------------------


def test_stats_match_the_layer_input():
    model = tiny_model("llama")
    seqs = sequences()
    stats = collect_activation_stats(model, seqs, max_samples=25)
    layer = model.model.layers[0]
    with torch.no_grad():
        embedded = [model.model.embed_tokens(torch.tensor(seq)) for seq in seqs]
        inputs = layer.input_layernorm(torch.cat(embedded))  # [T, K]
    q = stats["model.layers.0.self_attn.q_proj"]
    torch.testing.assert_close(q.absmax, inputs.abs().amax(dim=0), rtol=1e-6, atol=0)
    torch.testing.assert_close(q.mean_abs, inputs.abs().mean(dim=0), rtol=1e-5, atol=0)
    assert q.sample.shape == (25, 64) and q.sample.dtype == torch.float32
    # bottom-k sampling: the rows of the 25 lowest per-token priorities, in token order
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    priorities = torch.cat([torch.rand(len(seq), generator=generator) for seq in seqs])  # [T]
    keep = priorities.topk(25, largest=False).indices.sort().values
    torch.testing.assert_close(q.sample, inputs[keep], rtol=1e-5, atol=1e-6)
    # linears that read the same input keep the same rows (one matrix per group for the search)
    for other in ("k_proj", "v_proj"):
        assert torch.equal(stats[f"model.layers.0.self_attn.{other}"].sample, q.sample)
    gate, up = stats["model.layers.1.mlp.gate_proj"], stats["model.layers.1.mlp.up_proj"]
    assert torch.equal(gate.sample, up.sample)


def test_stats_cover_every_decoder_linear():
    model = tiny_model("qwen2", num_kv_heads=4)
    stats = collect_activation_stats(model, sequences(1, 10), max_samples=512)
    expected = {
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("model.layers.")
    }
    assert set(stats) == expected and len(expected) == 14
    assert all(s.sample.shape[0] == 10 for s in stats.values())  # fewer tokens than max_samples: all kept
    assert stats["model.layers.1.mlp.down_proj"].absmax.shape == (128,)


def test_calibration_rejects_empty_input():
    with pytest.raises(InvalidParameterError, match="non-empty"):
        collect_activation_stats(tiny_model("llama"), [[]])


# -- the smoothing transform is exact -------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type, num_kv_heads", [("llama", 2), ("gemma3_text", 2), ("qwen2", 4), ("phi3", 4)],
    ids=["llama-gqa", "gemma3-gqa", "qwen2-mha-bias", "phi3-mha"],
)
@pytest.mark.parametrize("alpha", [0.5, "auto"])
def test_smoothing_leaves_float_logits_unchanged(model_type, num_kv_heads, alpha):
    model = tiny_model(model_type, num_kv_heads)
    before = logits_of(model)
    norm_before = model.model.layers[0].input_layernorm.weight.detach().clone()
    choices = smooth_model(model, collect_activation_stats(model, sequences()), alpha)
    after = logits_of(model)
    assert not torch.allclose(model.model.layers[0].input_layernorm.weight, norm_before)  # really rescaled
    assert set(choices) == {g.name for g in smoothing_groups(model)}
    # fp32: each fold rounds weights once (relative 2^-24); 1e-4 of the logits' scale is ample.
    scale = before.abs().max().item()
    assert (after - before).abs().max().item() < 1e-4 * scale


def test_groups_per_family():
    gqa = {g.name: g for g in smoothing_groups(tiny_model("llama", num_kv_heads=2))}
    # with grouped-query attention o_proj is not smoothed
    assert sorted(n.split(".", 3)[3] for n in gqa if n.startswith("model.layers.0.")) == \
        ["mlp.down", "mlp.gate_up", "self_attn.qkv"]
    assert gqa["model.layers.1.mlp.down"].fold_into == "model.layers.1.mlp.up_proj"
    assert gqa["model.layers.1.mlp.gate_up"].fold_into == "model.layers.1.post_attention_layernorm"
    mha = {g.name: g for g in smoothing_groups(tiny_model("llama", num_kv_heads=4))}
    assert mha["model.layers.0.self_attn.o"].fold_into == "model.layers.0.self_attn.v_proj"
    gemma = {g.name: g for g in smoothing_groups(tiny_model("gemma3_text"))}
    assert gemma["model.layers.0.mlp.gate_up"].fold_into == "model.layers.0.pre_feedforward_layernorm"
    assert gemma[QKV0].linear_names == tuple(f"model.layers.0.self_attn.{p}_proj" for p in "qkv")


def test_dead_channels_get_finite_factors():
    absmax = torch.tensor([0.0, 1.0, 4.0])
    weight = torch.tensor([[1.0, 0.0, 2.0]])
    s = smoothing_factors(absmax, [weight], 0.5)
    assert bool(torch.isfinite(s).all()) and bool((s > 0).all())
    assert s[2].item() == pytest.approx((4.0**0.5) / (2.0**0.5))


# -- auto α --------------------------------------------------------------------------------------


def hand_w8a8_mse(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> float:
    """The group's output MSE with x / s per-token and W · diag(s) per-channel symmetric int8."""

    def rows_int8(t: torch.Tensor) -> torch.Tensor:
        step = t.abs().amax(dim=1, keepdim=True) / 127
        return torch.round(t / step).clamp(-127, 127).double() * step.double()

    out = rows_int8(x / s) @ rows_int8(w * s).T
    return (out - x.double() @ w.double().T).pow(2).mean().item()


def plant_massive_activation(model: nn.Module) -> nn.Module:
    """A "massive activation" (Sun et al. 2024): channel 5 of the residual stream is large and nearly
    constant across tokens; with the norms' planted weight it is ~50x the median channel after them."""
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, 5] = 1.0 + 0.02 * torch.randn(VOCAB, generator=torch.Generator().manual_seed(4))
    return model


def test_auto_alpha_beats_half_on_an_outlier_channel():
    # With a massive activation, α = 0.5 (which equalizes the maxima of x / s and W · diag(s)) is
    # measurably worse than a larger α.
    model = plant_massive_activation(tiny_model("llama", outlier=20.0))
    stats = collect_activation_stats(model, sequences(4, 32), max_samples=128)
    attn = model.model.layers[0].self_attn
    weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()  # [N, K]
    q = stats["model.layers.0.self_attn.q_proj"]
    w_max = weight.abs().amax(dim=0)
    by_alpha = {a: hand_w8a8_mse(q.sample, weight, q.absmax**a / w_max ** (1 - a)) for a in ALPHA_GRID}

    choice = smooth_model(model, stats, "auto")[QKV0]
    best = min(by_alpha, key=by_alpha.get)
    assert choice.alpha == best
    assert choice.mse == pytest.approx(by_alpha[best], rel=1e-4)
    assert choice.mse_at_half == pytest.approx(by_alpha[0.5], rel=1e-4)
    assert choice.alpha > 0.5 and choice.mse < 0.9 * choice.mse_at_half


def test_fixed_alpha_is_applied_everywhere():
    model = tiny_model("qwen3")
    stats = collect_activation_stats(model, sequences())
    reference = copy.deepcopy(model)
    choices = smooth_model(model, stats, 0.8)
    assert {c.alpha for c in choices.values()} == {0.8}
    # the qkv group of layer 0 was scaled by exactly the α = 0.8 factors
    q = stats["model.layers.0.self_attn.q_proj"]
    ref_attn = reference.model.layers[0].self_attn
    weights = [ref_attn.q_proj.weight, ref_attn.k_proj.weight, ref_attn.v_proj.weight]
    s = smoothing_factors(q.absmax, weights, 0.8)
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.weight, ref_attn.q_proj.weight * s)


def with_w8a8_layers(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.startswith("model.layers."):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, W8A8Linear.from_float(module))
    return model


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_smoothing_cuts_the_w8a8_logit_error(model_type):
    model = plant_massive_activation(tiny_model(model_type, outlier=20.0))
    reference = logits_of(model)
    stats = collect_activation_stats(model, sequences(4, 32))
    plain = logits_of(with_w8a8_layers(copy.deepcopy(model)))
    smooth_model(model, stats, "auto")
    smoothed = logits_of(with_w8a8_layers(model))
    # Without smoothing the outlier channel sets every token's int8 step; measured 3-15x less
    # error with it across seeds and both families: at least 2x is required.
    assert (smoothed - reference).pow(2).mean() < 0.5 * (plain - reference).pow(2).mean()


@pytest.mark.parametrize("alpha", [1.5, -0.1, "best"])
def test_bad_alpha_is_refused(alpha):
    model = tiny_model("llama")
    with pytest.raises(InvalidParameterError, match="alpha"):
        smooth_model(model, {}, alpha)


def test_fused_or_uncalibrated_models_are_refused():
    model = tiny_model("llama")
    with pytest.raises(InvalidParameterError, match="calibration statistics"):
        smooth_model(model, {}, 0.5)
    fuse_projections(model)
    with pytest.raises(InvalidParameterError, match="fused"):
        smoothing_groups(model)


def test_apply_smoothing_checks_the_factor_shape():
    model = tiny_model("llama")
    group = smoothing_groups(model)[0]
    with pytest.raises(InvalidParameterError, match="shape"):
        apply_smoothing(model, group, torch.ones(3))


# -- AWQ -----------------------------------------------------------------------------------------


def int4_output_mse(x: torch.Tensor, w: torch.Tensor, reference: torch.Tensor, group_size: int) -> float:
    q, scales, mins = quantize_int4(w, group_size)
    out = x.double() @ dequantize_int4(q, scales, mins, group_size).double().T
    return (out - reference).pow(2).mean().item()


def test_awq_beats_round_to_nearest_on_a_salient_channel():
    model = tiny_model("llama", outlier=30.0)
    original = copy.deepcopy(model)
    before = logits_of(model)
    stats = collect_activation_stats(model, sequences(4, 32), max_samples=128)
    betas = awq_scale_model(model, stats, group_size=32)
    assert set(betas) == {g.name for g in smoothing_groups(model)}
    assert all(0.0 <= b < 1.0 for b in betas.values())
    assert (logits_of(model) - before).abs().max().item() < 1e-4 * before.abs().max().item()  # exact in float

    x = stats["model.layers.0.self_attn.q_proj"].sample  # what the original group read
    w_orig = original.model.layers[0].self_attn.q_proj.weight.detach()
    w_awq = model.model.layers[0].self_attn.q_proj.weight.detach()
    # the input the scaled model's group reads: the folded norm divides x by s
    norm_before = original.model.layers[0].input_layernorm.weight.detach()
    s = norm_before / model.model.layers[0].input_layernorm.weight.detach()
    reference = x.double() @ w_orig.double().T
    rtn = int4_output_mse(x, w_orig, reference, 32)
    awq = int4_output_mse(x / s, w_awq, reference, 32)
    assert betas[QKV0] > 0.0 and awq < rtn


def test_awq_refuses_an_unknown_group_size():
    with pytest.raises(InvalidParameterError, match="group_size"):
        awq_scale_model(tiny_model("llama"), {}, group_size=48)
