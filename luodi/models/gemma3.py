"""Gemma 3 (text): HF `Gemma3ForCausalLM`, parameter names kept.

What sets it apart from Llama: the embedding is scaled by sqrt(hidden_size); RMSNorm weights are
offsets (1 + w); every block has four norms (pre/post attention, pre/post MLP); q and k get a
per-head norm; attention is interleaved local (sliding window, its own RoPE base) and global;
the MLP uses tanh-approximated GELU; scores are scaled by `query_pre_attn_scalar`.

In GGUF (architecture "gemma3"): its own names for the four norms, norm weights stored + 1
(undone by `gguf_sanitize`), and its metadata read by `gguf_config_fields`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from luodi.loading.gguf import ArchMetadata, float32_value
from luodi.models.base import CausalLM
from luodi.models.config import ModelConfig
from luodi.models.family import Family
from luodi.models.gguf_spec import LAYER_NAMES, GGUFSpec, Weights
from luodi.models.llama import LlamaAttention
from luodi.models.layers import (
    AttentionBackend, GatedMLP, GemmaRMSNorm, LayerNorms, RotaryEmbedding, add_rms_norm,
)

Rope = tuple[torch.Tensor, torch.Tensor]


class Gemma3Attention(LlamaAttention):
    """Llama's projections plus per-head q/k norms; local (sliding) layers take the second RoPE table."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.rope_index = 1 if config.is_sliding_layer(layer_idx) else 0
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)


class Gemma3DecoderLayer(nn.Module):
    norms = LayerNorms(pre_mlp="pre_feedforward_layernorm", post_attention="post_attention_layernorm",
                       post_mlp="post_feedforward_layernorm")

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        dim, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Gemma3Attention(config, layer_idx)
        self.mlp = GatedMLP(dim, config.intermediate_size, config.hidden_act)
        self.input_layernorm = GemmaRMSNorm(dim, eps)
        self.post_attention_layernorm = GemmaRMSNorm(dim, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(dim, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(dim, eps)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, rope: Rope, kv: AttentionBackend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Llama's residual-stream contract; this layer's output is the post-normed MLP output."""
        h, residual = add_rms_norm(x, residual, self.input_layernorm)
        attn = self.self_attn(h, rope, kv)
        norms = self.pre_feedforward_layernorm, self.post_attention_layernorm
        h, residual = add_rms_norm(attn, residual, norms[0], x_norm=norms[1])  # residual + post(attn)
        out, _ = add_rms_norm(self.mlp(h), None, self.post_feedforward_layernorm)
        return out, residual


class Gemma3Model(nn.Module):
    native_stack = None  # set by `luodi.models.native_stack.attach` for inference

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_scale = config.hidden_size**0.5
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        local_base = config.rope_local_base_freq or 10000.0
        self.rotary_emb_local = RotaryEmbedding(config.head_dim, local_base)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: AttentionBackend) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, hidden]
        # HF casts the scale to the weight dtype before multiplying.
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        # [global, local]: a layer takes ropes[its attention's rope_index]
        ropes = self.rotary_emb(positions, x.dtype), self.rotary_emb_local(positions, x.dtype)
        if self.native_stack is not None and (out := self.native_stack(x, ropes, kv)) is not None:
            return out
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, ropes[layer.self_attn.rope_index], kv)
        return add_rms_norm(x, residual, self.norm)[0]


class Gemma3ForCausalLM(CausalLM):
    model_class = Gemma3Model


def config_fields(raw: dict[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3's own fields, with HF `Gemma3TextConfig`'s defaults (tied head, tanh GELU)."""
    return dict(
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        hidden_act=str(raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"),
        sliding_window=raw.get("sliding_window"),
        layer_types=_layer_types(raw, parsed["num_hidden_layers"]),
        rope_local_base_freq=_local_rope_base(raw),
        query_pre_attn_scalar=raw.get("query_pre_attn_scalar"),
    )


def _layer_types(raw: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    if raw.get("layer_types"):
        return tuple(raw["layer_types"])
    # Older Gemma 3 configs give only the period: every Nth layer is global.
    pattern = int(raw.get("sliding_window_pattern", 6))
    return tuple(
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)
    )


def _local_rope_base(raw: dict[str, Any]) -> float:
    """transformers 5 nests it in `rope_parameters["sliding_attention"]`; older configs say
    `rope_local_base_freq`."""
    local = (raw.get("rope_parameters") or {}).get("sliding_attention") or {}
    base = local.get("rope_theta", raw.get("rope_local_base_freq"))
    return float(base) if base is not None else 10000.0


def hf_fields(config: ModelConfig) -> dict[str, Any]:
    return dict(
        hidden_activation=config.hidden_act,
        sliding_window=config.sliding_window,
        layer_types=list(config.layer_types),
        rope_local_base_freq=config.rope_local_base_freq,
        query_pre_attn_scalar=config.query_pre_attn_scalar,
    )


# -- GGUF -------------------------------------------------------------------------------------------

# llama.cpp runs Gemma 3 sliding-window layers with this RoPE base (src/llama-model.cpp).
_GGUF_LOCAL_ROPE_BASE = 10000.0


def gguf_sanitize(config: ModelConfig, weights: Weights) -> Iterator[tuple[str, torch.Tensor]]:
    """llama.cpp's Gemma3Model stores norm weights + 1 (HF's RMSNorm multiplies by 1 + w)."""
    for name, tensor in weights:
        yield name, tensor.float() - 1.0 if name.endswith("norm.weight") else tensor


def gguf_config_fields(meta: ArchMetadata, common: dict[str, Any]) -> dict[str, Any]:
    num_layers, hidden = common["num_hidden_layers"], common["hidden_size"]
    # llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3) scales queries by 1/sqrt(hidden / heads) for the
    # 62-layer 27B model and by 1/sqrt(head_dim) otherwise, matching HF's query_pre_attn_scalar.
    scalar = hidden // common["num_attention_heads"] if num_layers == 62 else common["head_dim"]
    softcap = meta.get("final_logit_softcapping")
    return {
        "hidden_act": "gelu_pytorch_tanh",
        "sliding_window": int(meta.get("attention.sliding_window", 4096)),
        **_gguf_layer_pattern(meta, num_layers),
        "rope_local_base_freq": _GGUF_LOCAL_ROPE_BASE,
        "query_pre_attn_scalar": float(scalar),
        "final_logit_softcapping": float32_value(softcap) if softcap else None,
        "eos_token_id": _gguf_eos_ids(meta, common["eos_token_id"]),
    }


def _gguf_layer_pattern(meta: ArchMetadata, num_layers: int) -> dict[str, Any]:
    """Which layers slide, in HF's keys: `layer_types` from a per-layer flag array, else the period
    (`sliding_window_pattern`; every Nth layer global), which `config_fields` expands."""
    pattern = meta.get("attention.sliding_window_pattern")
    if isinstance(pattern, np.ndarray) and len(pattern) == num_layers:  # per layer: True = sliding
        return {"layer_types": ["sliding_attention" if swa else "full_attention" for swa in pattern.tolist()]}
    if isinstance(pattern, int) and pattern > 0:
        return {"sliding_window_pattern": pattern}
    return {}


def _gguf_eos_ids(meta: ArchMetadata, eos_ids: list[int]) -> list[int]:
    """The file's EOS ids and <end_of_turn>, as HF's generation_config (eos_token_id [1, 106])."""
    tokens = meta.f.metadata.get("tokenizer.ggml.tokens") or []
    if "<end_of_turn>" not in tokens or tokens.index("<end_of_turn>") in eos_ids:
        return eos_ids
    return [*eos_ids, tokens.index("<end_of_turn>")]


GGUF = GGUFSpec(
    ("gemma3",),
    layer_names={**LAYER_NAMES, "post_attention_norm": "post_attention_layernorm",
                 "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"},
    config_fields=gguf_config_fields, sanitize=gguf_sanitize,
)
FAMILY = Family("gemma3_text", "Gemma3ForCausalLM", Gemma3ForCausalLM, config_fields=config_fields,
                hf_fields=hf_fields, aliases=("gemma3",), gguf=GGUF)
