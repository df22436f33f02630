"""Exact rescalings of a float model that make it easier to quantize: SmoothQuant and AWQ.

Both rest on one identity: for a linear layer y = x Wᵀ and any positive per-input-channel vector s,
y = (x / s)(W · diag(s))ᵀ. Dividing the input by s costs nothing when the input is the output of
an RMSNorm (scale its weight) or of a linear layer whose channel j reaches the next layer only
through channel j (scale its output rows). This module owns which layers form such groups in each
supported family, the choice of s, and the folding. It knows nothing of how layers are later
stored or run; the quantization error it minimizes is computed with the schemes' own numerics
(`luodi.quant.w8a8`, `luodi.quant.weight_only`).

- SmoothQuant (Xiao et al. 2023, eq. 4): s_j = max|X_j|^α / max|W_:,j|^(1−α); "auto" picks α per
  group from a grid by the group's W8A8 output error on calibration rows.
- AWQ (Lin et al. 2024, sec. 3.3): s = mean|X|^β, β from a grid by the group's output error with
  int4 round-to-nearest weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from luodi.errors import InvalidParameterError, UnsupportedArchitectureError
from luodi.models.layers import GemmaRMSNorm, RMSNorm
from luodi.quant.w8a8 import fake_quantize_int8
from luodi.quant.weight_only import GROUP_SIZES as INT4_GROUP_SIZES
from luodi.quant.weight_only import dequantize_int4, quantize_int4
from luodi.quant_tools.calibration import LinearStats

ALPHA_GRID: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.3 … 0.9
# Factors are kept within [1/MAX_FACTOR, MAX_FACTOR]: a channel that is (nearly) dead in x or in W
# would otherwise get s = 0 or inf and turn the folded weights into inf/nan.
MAX_FACTOR = 1e4
_EPS = 1e-5

FakeQuant = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class SmoothingGroup:
    """Linears that read the same input, and where that input's scale can be folded."""

    name: str  # e.g. "model.layers.3.self_attn.qkv"
    linear_names: tuple[str, ...]
    fold_into: str  # name of the RMSNorm (or previous nn.Linear) that absorbs 1/s


@dataclass(frozen=True, slots=True)
class AlphaChoice:
    """The α chosen for one group and the group's W8A8 output MSE at it and at α = 0.5."""

    alpha: float
    mse: float
    mse_at_half: float


# -- which layers, and where their input scale goes -----------------------------------------------


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise InvalidParameterError(
            f"{name} is a {type(module).__name__}, not a float nn.Linear; smooth before quantizing",
            param="model",
        )
    return module


def _decoder_layers(model: nn.Module) -> list[Any]:
    """The decoder layers (typed loosely: families differ in their norms)."""
    layers = model.get_submodule("model.layers")
    assert isinstance(layers, nn.ModuleList)
    return list(layers)


def _check_unfused(prefix: str, layer: Any) -> None:
    fused = getattr(layer.self_attn, "qkv_proj", None), getattr(layer.mlp, "gate_up_proj", None)
    if any(module is not None for module in fused):
        raise InvalidParameterError(
            f"{prefix} has fused projections; smooth the float model before `prepare_for_inference` "
            "(load it with for_inference=False)", param="model",
        )


def smoothing_groups(model: nn.Module) -> list[SmoothingGroup]:
    """The groups of every decoder layer; each group's fold leaves every other group's input alone."""
    groups = []
    for i, layer in enumerate(_decoder_layers(model)):
        prefix = f"model.layers.{i}"
        _check_unfused(prefix, layer)
        attn, mlp = f"{prefix}.self_attn", f"{prefix}.mlp"
        norms = layer.norms  # the family's declared `LayerNorms`
        qkv = tuple(f"{attn}.{p}" for p in ("q_proj", "k_proj", "v_proj"))
        groups.append(SmoothingGroup(f"{attn}.qkv", qkv, f"{prefix}.{norms.input}"))
        # Each attention output channel is a convex mix of one v channel over the tokens, so scaling
        # v's output rows by 1/s scales o_proj's input by 1/s exactly. With grouped-query attention
        # one v channel feeds several heads, so o_proj's factors would have to agree across them;
        # that constrained search is not done, and o_proj is then left unsmoothed.
        if layer.self_attn.num_kv_heads == layer.self_attn.num_heads:
            groups.append(SmoothingGroup(f"{attn}.o", (f"{attn}.o_proj",), f"{attn}.v_proj"))
        gate_up = (f"{mlp}.gate_proj", f"{mlp}.up_proj")
        groups.append(SmoothingGroup(f"{mlp}.gate_up", gate_up, f"{prefix}.{norms.pre_mlp}"))
        # down(act(gate) * up): channel j of up's output reaches down only through channel j.
        groups.append(SmoothingGroup(f"{mlp}.down", (f"{mlp}.down_proj",), f"{mlp}.up_proj"))
    return groups


# -- the factors, and folding them in -------------------------------------------------------------


def _column_absmax(weights: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([w.detach().float() for w in weights]).abs().amax(dim=0)  # [K]


def smoothing_factors(absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's s [K] for input maxima `absmax` [K] and the group's weights ([N_i, K] each)."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidParameterError(f"alpha={alpha} is outside [0, 1]; SmoothQuant uses 0.3-0.9",
                                    param="alpha")
    x_max = absmax.float().clamp(min=_EPS)
    w_max = _column_absmax(weights).to(x_max.device).clamp(min=_EPS)
    s = x_max.pow(alpha) / w_max.pow(1.0 - alpha)
    return s.clamp(1.0 / MAX_FACTOR, MAX_FACTOR)


def _check_factors(model: nn.Module, group: SmoothingGroup, s: torch.Tensor) -> None:
    for name in group.linear_names:
        k = _linear(model, name).in_features
        if s.shape != (k,):
            raise InvalidParameterError(
                f"factors of shape {tuple(s.shape)} for {name}, which reads {k} channels: give one per input"
            )
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise InvalidParameterError(f"factors for {group.name} must be finite and positive")


@torch.no_grad()
def apply_smoothing(model: nn.Module, group: SmoothingGroup, s: torch.Tensor) -> None:
    """W <- W · diag(s) for the group's linears and the input's producer divided by s: exact in reals."""
    _check_factors(model, group, s)
    s = s.float()
    for name in group.linear_names:
        weight = _linear(model, name).weight
        weight.copy_(weight.float() * s.to(weight.device))
    _fold_inverse(model.get_submodule(group.fold_into), group.fold_into, s)


def _fold_inverse(producer: nn.Module, name: str, s: torch.Tensor) -> None:
    if isinstance(producer, GemmaRMSNorm):
        # Gemma scales by (1 + w), so w' = (1 + w) / s - 1. When (1 + w) / s is small, w' is near -1
        # and 1 + w' keeps few significant bits in a 16-bit float: the folded weight is kept in fp32
        # (its forward computes in fp32 anyway).
        folded = (1.0 + producer.weight.float()) / s.to(producer.weight.device) - 1.0
        producer.weight = nn.Parameter(folded, requires_grad=False)
    elif isinstance(producer, RMSNorm):
        producer.weight.copy_(producer.weight.float() / s.to(producer.weight.device))
    elif isinstance(producer, nn.Linear):
        if producer.out_features != s.shape[0]:
            raise InvalidParameterError(
                f"{name} has {producer.out_features} outputs but {s.shape[0]} factors: it cannot absorb them"
            )
        s = s.to(producer.weight.device)
        producer.weight.copy_(producer.weight.float() / s[:, None])
        if producer.bias is not None:
            producer.bias.copy_(producer.bias.float() / s)
    else:
        raise UnsupportedArchitectureError(
            f"cannot fold a scale into {name} ({type(producer).__name__}); only RMSNorm, GemmaRMSNorm "
            "and nn.Linear are supported"
        )


# -- choosing s by the group's output error -------------------------------------------------------


def _group_inputs(stats: dict[str, LinearStats], group: SmoothingGroup) -> LinearStats:
    """The group's calibration statistics (its linears share one input: the first one's are taken)."""
    missing = [name for name in group.linear_names if name not in stats]
    if missing:
        raise InvalidParameterError(
            f"no calibration statistics for {missing[0]}; collect them with collect_activation_stats on "
            "this same (unsmoothed, unfused) model", param="stats",
        )
    return stats[group.linear_names[0]]


def _group_weight(model: nn.Module, group: SmoothingGroup) -> torch.Tensor:
    return torch.cat([_linear(model, n).weight.detach().float() for n in group.linear_names])  # [N, K]


def output_mse(
    x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor, quantize_x: FakeQuant, quantize_w: FakeQuant,
    reference: torch.Tensor | None = None,
) -> float:
    """Mean squared error of the group output when x / s and W · diag(s) are (fake-)quantized.

    `x` [S, K] calibration rows, `weight` [N, K] float; `reference` = x Wᵀ if already computed.
    """
    if reference is None:
        reference = x @ weight.T  # [S, N]
    s = s.to(x.device)
    out = quantize_x(x / s) @ quantize_w(weight * s).T  # [S, N]
    return float((out - reference).pow(2).mean())


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _validate_alpha(alpha: float | str, grid: tuple[float, ...]) -> tuple[float, ...]:
    if alpha == "auto":
        if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
            raise InvalidParameterError(f"alpha grid {grid} must be non-empty, within [0, 1]", param="grid")
        return tuple(grid)
    if isinstance(alpha, str) or not 0.0 <= float(alpha) <= 1.0:
        raise InvalidParameterError(f"alpha={alpha!r} must be 'auto' or a number in [0, 1]", param="alpha")
    return (float(alpha),)


def _choose_alpha(inputs: LinearStats, weight: torch.Tensor, candidates: tuple[float, ...]) -> AlphaChoice:
    """The candidate α of least W8A8 output error on the calibration rows (the grid's order breaks ties)."""
    x = inputs.sample.to(weight.device)  # [S, K]
    reference = x @ weight.T  # [S, N]
    mses = {
        a: output_mse(x, weight, smoothing_factors(inputs.absmax, [weight], a), fake_quantize_int8,
                      fake_quantize_int8, reference)
        for a in (*candidates, 0.5)
    }
    best = min(candidates, key=lambda a: mses[a])
    return AlphaChoice(alpha=best, mse=mses[best], mse_at_half=mses[0.5])


def smooth_model(
    model: nn.Module, stats: dict[str, LinearStats], alpha: float | str = "auto",
    grid: tuple[float, ...] = ALPHA_GRID,
) -> dict[str, AlphaChoice]:
    """SmoothQuant every group of `model` in place: a fixed α, or ("auto") the grid α of least W8A8 error."""
    candidates = _validate_alpha(alpha, grid)
    choices = {}
    for group in smoothing_groups(model):
        inputs = _group_inputs(stats, group)
        weight = _group_weight(model, group)
        choice = _choose_alpha(inputs, weight, candidates)
        apply_smoothing(model, group, smoothing_factors(inputs.absmax, [weight], choice.alpha))
        choices[group.name] = choice
    return choices


# -- AWQ ------------------------------------------------------------------------------------------


def awq_factors(mean_abs: torch.Tensor, beta: float) -> torch.Tensor:
    """s [K] = mean|x|^β, normalized so that max(s) · min(s) = 1 (as llm-awq's `auto_scale` does)."""
    s = mean_abs.float().clamp(min=1e-4).pow(beta)
    s = s / (s.max() * s.min()).sqrt()
    return s.clamp(1.0 / MAX_FACTOR, MAX_FACTOR)


def int4_fake_quantizer(group_size: int) -> FakeQuant:
    """dequantize(quantize(w)) with `luodi.quant.weight_only`'s group-wise int4 round-to-nearest."""

    def fake(w: torch.Tensor) -> torch.Tensor:
        q, scales, mins = quantize_int4(w, group_size)
        return dequantize_int4(q, scales, mins, group_size).to(w.device)

    return fake


def fitting_group_size(in_features: int, group_size: int) -> int | None:
    """The int4 group size a layer of `in_features` inputs is stored with: the largest allowed size
    up to `group_size` that divides it (as `luodi quantize` chooses), or None (stored as int8)."""
    fitting = [g for g in INT4_GROUP_SIZES if g <= group_size and in_features % g == 0]
    return max(fitting) if fitting else None


def _choose_beta(inputs: LinearStats, weight: torch.Tensor, group_size: int, grid_size: int) -> float:
    """The grid β of least output error with int4 weights on the calibration rows (ties: smaller β)."""
    quantize_w = int4_fake_quantizer(group_size)
    x = inputs.sample.to(weight.device)  # [S, K]
    reference = x @ weight.T  # [S, N]
    grid = [i / grid_size for i in range(grid_size)]  # β = 0 is plain round-to-nearest
    mses = [
        output_mse(x, weight, awq_factors(inputs.mean_abs, b), _identity, quantize_w, reference) for b in grid
    ]
    return grid[min(range(grid_size), key=mses.__getitem__)]


def awq_scale_model(
    model: nn.Module, stats: dict[str, LinearStats], group_size: int, grid_size: int = 20,
) -> dict[str, float]:
    """AWQ-scale every group of `model` in place for int4 weights; returns the chosen β per group.

    A group whose input width no allowed group size divides is stored as int8, and left unscaled.
    """
    if group_size not in INT4_GROUP_SIZES:
        raise InvalidParameterError(
            f"group_size={group_size} is not one of {', '.join(map(str, INT4_GROUP_SIZES))}",
            param="group_size",
        )
    if grid_size < 1:
        raise InvalidParameterError(f"grid_size={grid_size} must be at least 1", param="grid_size")
    betas = {}
    for group in smoothing_groups(model):
        inputs = _group_inputs(stats, group)
        weight = _group_weight(model, group)
        fitting = fitting_group_size(weight.shape[1], group_size)
        if fitting is None:
            continue
        beta = _choose_beta(inputs, weight, fitting, grid_size)
        apply_smoothing(model, group, awq_factors(inputs.mean_abs, beta))
        betas[group.name] = beta
    return betas
