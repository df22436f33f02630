"""Building blocks shared by the model families: norms, rotary embeddings, attention, the gated MLP.

Numerics follow the Hugging Face implementations they replace (cited per class), so that a
model built from these blocks matches transformers' logits. Nothing here knows about requests,
batches or the KV cache layout: attention reaches the cache only through `AttentionBackend`.

Layers pass the residual stream vLLM-style — each returns its output and the running sum
separately — so the add and the next norm can be one fused op (`luodi.kernels.fused`) when
running inference on CPU; with autograd on, or anywhere the fused ops do not apply, the same
helpers run the plain torch modules below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from luodi.kernels import fused
from luodi.kernels.fused import apply_rope


class AttentionBackend(Protocol):
    """What a model's attention layer may ask of the engine's KV cache for one forward pass."""

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """Store k/v ([T, Hkv, D]) for the new tokens, attend q ([T, H, D]); returns [T, H, D]."""
        ...

    def attend_rotary(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
        sin: torch.Tensor, *, scale: float, sliding_window: int | None = None,
        q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
        norm_eps: float = 1e-6, norm_is_offset: bool = False,
    ) -> torch.Tensor | None:
        """Norm (optional) and rotate q [T, H*D] / k [T, Hkv*D], store, attend -> [T, H*D]; or None
        when the backend cannot fuse this step (the caller then does it step by step)."""
        ...


class RMSNorm(nn.Module):
    """HF `LlamaRMSNorm`: normalize in fp32, scale by `weight` in the input dtype."""

    is_offset = False  # the weight is the scale itself

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # one fused kernel
        return self.weight * normed.to(x.dtype)


class GemmaRMSNorm(nn.Module):
    """HF `Gemma3RMSNorm`: the stored weight is an offset, applied as (1 + weight), all in fp32."""

    is_offset = True

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


def rope_inv_freq(rotary_dim: int, base: float, scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """Inverse frequencies [rotary_dim/2], with HF's "linear", "llama3" and "longrope" scalings."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (base**exponents)
    rope_type = (scaling or {}).get("rope_type") or "default"
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])  # type: ignore[index]
    if rope_type == "llama3":
        return _llama3_scaled(inv_freq, scaling)  # type: ignore[arg-type]
    if rope_type == "longrope":
        divisors = torch.tensor(_longrope_factors(scaling), dtype=torch.float32)  # type: ignore[arg-type]
        return 1.0 / (divisors * base**exponents)
    raise NotImplementedError(
        f"rope scaling {rope_type!r} is not supported (supported: linear, llama3, longrope)"
    )


def rope_attention_factor(scaling: dict[str, Any] | None) -> float:
    """The factor cos and sin are multiplied by: 1 but for longrope (HF `_compute_longrope_parameters`:
    sqrt(1 + ln(factor) / ln(original context)) unless the config states `attention_factor`)."""
    if (scaling or {}).get("rope_type") != "longrope":
        return 1.0
    assert scaling is not None
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor, original = float(scaling["factor"]), float(scaling["original_max_position_embeddings"])
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def _longrope_factors(scaling: dict[str, Any]) -> list[float]:
    """LongRoPE's per-frequency divisors: the long ones where the context is extended past the original.

    HF picks per forward pass from the sequence length (and recomputes the cache at the switch);
    Luodi picks once per model, by its context window as llama.cpp does by n_ctx, so that a
    position's rotation never depends on how long its sequence grows (cached prefixes stay valid).
    """
    return scaling["long_factor"] if float(scaling["factor"]) > 1.0 else scaling["short_factor"]


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    # HF `_compute_llama3_parameters`: long wavelengths are slowed by `factor`, short ones kept,
    # the band between them interpolated smoothly.
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin for the given positions, in HF's rotate-half (NeoX) layout, over the first
    `rotary_dim` channels of a head (all of them but for partial rotary, as Phi-4-mini's)."""

    def __init__(self, rotary_dim: int, base: float, scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.rope_base, self.rope_scaling = base, scaling
        self.attention_factor = rope_attention_factor(scaling)
        self.register_buffer("inv_freq", rope_inv_freq(rotary_dim, base, scaling), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, R/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, R]
        if self.attention_factor == 1.0:
            return emb.cos().to(dtype), emb.sin().to(dtype)
        return (emb.cos() * self.attention_factor).to(dtype), (emb.sin() * self.attention_factor).to(dtype)


Norm = RMSNorm | GemmaRMSNorm


@dataclass(frozen=True, slots=True)
class LayerNorms:
    """What each norm of a decoder layer does, by attribute name: declared by the family so that code
    outside it (the native layer stack, SmoothQuant's folding) need not probe the layer."""

    input: str = "input_layernorm"  # before attention
    pre_mlp: str = "post_attention_layernorm"  # the MLP reads its output
    post_attention: str | None = None  # of the attention output, before the residual add (Gemma 3)
    post_mlp: str | None = None  # of the MLP output (Gemma 3)


def is_fusable_norm(norm: nn.Module | None, dtype: torch.dtype) -> bool:
    """Whether the native fused ops compute `norm` exactly for activations of `dtype`."""
    # Llama's norm returns weight * normed.to(T): computed natively only when the weight is T too
    # (otherwise torch's type promotion decides the output dtype).
    return type(norm) is GemmaRMSNorm or (type(norm) is RMSNorm and norm.weight.dtype == dtype)


def _is_fusable(norm: nn.Module | None, x: torch.Tensor) -> bool:
    return is_fusable_norm(norm, x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, norm: Norm, x_norm: Norm | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(h), h) for h = x + residual, the residual stream's next value (h = x when it is None).

    `x_norm` first normalizes x (Gemma 3's post-attention norm, applied before the add).
    """
    # The native op takes one eps and one weight flavour for both norms (true of Gemma 3's layers).
    x_norm_ok = x_norm is None or (
        _is_fusable(x_norm, x) and (x_norm.is_offset, x_norm.eps) == (norm.is_offset, norm.eps)
    )
    if x_norm_ok and _is_fusable(norm, x) and fused.enabled_for(x):
        x_weight = None if x_norm is None else x_norm.weight
        return fused.add_rms_norm(
            x, residual, norm.weight, norm.eps, is_offset=norm.is_offset, x_weight=x_weight
        )
    if x_norm is not None:
        x = x_norm(x)
    h = x if residual is None else x + residual
    return norm(h), h


ACTIVATIONS = {
    "silu": F.silu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


def project_qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [T, H*D], k and v [T, Hkv*D] — with one matmul once `fuse_projections` has run."""
    h, hkv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    qkv_proj = getattr(attn, "qkv_proj", None)
    if qkv_proj is not None:
        q, k, v = qkv_proj(x).split([h * d, hkv * d, hkv * d], dim=-1)
        return q, k, v
    return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)


def rotary_attention(
    attn: nn.Module, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], kv: AttentionBackend, *,
    q_norm: Norm | None = None, k_norm: Norm | None = None, sliding_window: int | None = None,
) -> torch.Tensor:
    """Project, norm q/k per head (Qwen3, Gemma 3), rotate, attend: [T, H*D] for `o_proj`.

    On a CPU decode step the backend does norms, RoPE, the cache write and attention in one
    native call; otherwise each step runs as the torch modules here.
    """
    q, k, v = project_qkv(attn, x)  # [T, H*D], [T, Hkv*D], [T, Hkv*D]
    is_whole_head = rope[0].shape[-1] == attn.head_dim  # the native ops rotate whole heads only
    if is_whole_head and (q_norm is None or (_is_fusable(q_norm, q) and _is_fusable(k_norm, q))):
        norms = {} if q_norm is None or k_norm is None else dict(
            q_norm_weight=q_norm.weight, k_norm_weight=k_norm.weight, norm_eps=q_norm.eps,
            norm_is_offset=q_norm.is_offset)
        out = kv.attend_rotary(
            attn.layer_idx, q, k, v, *rope, scale=attn.scale, sliding_window=sliding_window, **norms
        )
        if out is not None:
            return out
    t, d = x.shape[0], attn.head_dim
    q, k, v = q.view(t, -1, d), k.view(t, -1, d), v.view(t, -1, d)
    if q_norm is not None and k_norm is not None:
        q, k = q_norm(q), k_norm(k)
    q, k = _rotate(q, rope), _rotate(k, rope)
    out = kv.attend(attn.layer_idx, q, k, v, scale=attn.scale, sliding_window=sliding_window)
    return out.reshape(t, -1)


def _rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """RoPE on the first R channels of each head of x [T, H, D] (cos/sin [T, 1, R]); the rest pass
    (HF `apply_rotary_pos_emb` of Phi 3)."""
    r = rope[0].shape[-1]
    if r == x.shape[-1]:
        return apply_rope(x, *rope)
    return torch.cat((apply_rope(x[..., :r], *rope), x[..., r:]), dim=-1)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) — the MLP of every supported family."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.gate_up_proj: nn.Module | None = None  # set by `fuse_projections` for inference
        if hidden_act not in ACTIVATIONS:
            raise NotImplementedError(f"activation {hidden_act!r} (supported: {', '.join(ACTIVATIONS)})")
        self.hidden_act = hidden_act
        self.act = ACTIVATIONS[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate_up = self.gate_up_proj(x)  # [T, 2I]
            if self.hidden_act in fused.GATED_ACTS and fused.enabled_for(gate_up):
                return self.down_proj(fused.gated_act(gate_up, self.hidden_act))
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
