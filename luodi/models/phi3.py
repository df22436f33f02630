"""Phi 3 / 3.5 / Phi-4-mini (HF `Phi3ForCausalLM`, model_type "phi3"): the Llama architecture with
q/k/v and gate/up stored packed, LongRoPE ("su") scaling, and partial rotary (Phi-4-mini).

Checkpoints pack q/k/v into `qkv_proj` and gate/up into `gate_up_proj`. `sanitize` splits them
into Llama's projections (views of the loaded tensors, no copy), so quantization, smoothing, LoRA
and saving see the same parts as in every family; `luodi.models.inference` packs them again for
serving. Everything else is Llama's.

In GGUF (architecture "phi3", llama.cpp's `Phi3MiniModel` converter): the packed `attn_qkv` and
`ffn_up` (gate and up) as HF stores them, no q/k permutation (NeoX RoPE, as HF), the LongRoPE
factors as the tensors `rope_factors_long` / `rope_factors_short`, and `rope.dimension_count` the
rotary part of a head (Phi-4-mini's partial rotary), read back by `gguf_config_fields`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from luodi.errors import ModelFormatError
from luodi.loading.gguf import ArchMetadata, float32_value
from luodi.models.config import ModelConfig
from luodi.models.family import Family, every_layer_sliding
from luodi.models.gguf_spec import LAYER_NAMES, GGUFSpec
from luodi.models.llama import LlamaForCausalLM


def config_fields(raw: dict[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    """The `ModelConfig` fields HF's `Phi3Config` reads its own way (`parsed`: the generic ones)."""
    fields = every_layer_sliding(raw, parsed)  # as transformers' Phi3Model masks
    if parsed["rope_scaling"] is not None:
        fields["rope_scaling"] = _longrope(raw, parsed["rope_scaling"], parsed["max_position_embeddings"])
    return fields


def _longrope(raw: dict[str, Any], scaling: dict[str, Any], max_positions: int) -> dict[str, Any]:
    """HF's `Phi3Config.convert_rope_params_to_dict` + `standardize_rope_params`: "su" and "yarn"
    name LongRoPE, a top-level `original_max_position_embeddings` wins, and the factor defaults to
    the context's growth over it."""
    scaling = {k: v for k, v in scaling.items() if k != "type"}
    if scaling["rope_type"] in ("su", "yarn"):
        scaling["rope_type"] = "longrope"
    if scaling["rope_type"] != "longrope":
        return scaling
    original = raw.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings")
    scaling["original_max_position_embeddings"] = int(original or max_positions)
    if scaling.get("factor") is None:
        scaling["factor"] = max_positions / scaling["original_max_position_embeddings"]
    return scaling


def sanitize(
    config: ModelConfig, weights: Iterable[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """HF names with the packed projections split: qkv_proj -> q/k/v_proj, gate_up_proj -> gate/up_proj."""
    q_dim = config.num_attention_heads * config.head_dim
    kv_dim = config.num_key_value_heads * config.head_dim
    for name, tensor in weights:
        if name.endswith("self_attn.qkv_proj.weight"):
            _check_rows(name, tensor, q_dim + 2 * kv_dim)
            prefix = name.removesuffix("qkv_proj.weight")
            yield from zip((f"{prefix}{p}_proj.weight" for p in "qkv"), tensor.split([q_dim, kv_dim, kv_dim]))
        elif name.endswith("mlp.gate_up_proj.weight"):
            _check_rows(name, tensor, 2 * config.intermediate_size)
            prefix = name.removesuffix("gate_up_proj.weight")
            yield from zip((f"{prefix}gate_proj.weight", f"{prefix}up_proj.weight"), tensor.chunk(2))
        else:
            yield name, tensor


def _check_rows(name: str, tensor: torch.Tensor, rows: int) -> None:
    if tensor.shape[0] != rows:
        raise ModelFormatError(f"weight {name} has {tensor.shape[0]} rows, the config implies {rows}")


class Phi3ForCausalLM(LlamaForCausalLM):
    sanitize = staticmethod(sanitize)


def hf_fields(config: ModelConfig) -> dict[str, Any]:
    """HF's Phi3Config takes the original context from the top level (its default, 4096, otherwise)."""
    scaling = config.rope_scaling or {}
    original = scaling.get("original_max_position_embeddings", config.max_position_embeddings)
    return {"sliding_window": config.sliding_window, "original_max_position_embeddings": original}


# -- GGUF -------------------------------------------------------------------------------------------

_ROPE_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")


def gguf_config_fields(meta: ArchMetadata, common: dict[str, Any]) -> dict[str, Any]:
    """The HF keys of `Phi3MiniModel.set_gguf_parameters`' metadata and LongRoPE tensors."""
    head_dim = common["hidden_size"] // common["num_attention_heads"]
    rotary_dim = int(meta.get("rope.dimension_count") or head_dim)
    original = int(meta.get("rope.scaling.original_context_length") or common["max_position_embeddings"])
    fields: dict[str, Any] = {
        "head_dim": head_dim,
        "partial_rotary_factor": rotary_dim / head_dim,
        "sliding_window": int(meta.get("attention.sliding_window") or 0) or None,  # 0: none (Phi-4)
        "original_max_position_embeddings": original,
    }
    if any(name in meta.f.tensors for name in _ROPE_FACTORS):
        fields["rope_scaling"] = _gguf_longrope(meta, original)
    return fields


def _gguf_longrope(meta: ArchMetadata, original: int) -> dict[str, Any]:
    """LongRoPE as HF states it; `config_fields` adds the factor (context / original)."""
    missing = [name for name in _ROPE_FACTORS if name not in meta.f.tensors]
    if missing:
        raise ModelFormatError(f"{meta.f.path} has LongRoPE factors but lacks {missing[0]}; re-convert it")
    long_factor, short_factor = ([float32_value(v) for v in meta.f.dequantize(name).tolist()]
                                 for name in _ROPE_FACTORS)
    scaling = {"rope_type": "longrope", "long_factor": long_factor, "short_factor": short_factor,
               "original_max_position_embeddings": original}
    attn_factor = meta.get("rope.scaling.attn_factor")  # the converter's sqrt(1 + ln s / ln original)
    if attn_factor is not None:
        scaling["attention_factor"] = float32_value(attn_factor)
    return scaling


GGUF = GGUFSpec(
    ("phi3",), layer_names={**LAYER_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
    config_fields=gguf_config_fields, config_tensors=frozenset(_ROPE_FACTORS),
)
FAMILY = Family("phi3", "Phi3ForCausalLM", Phi3ForCausalLM, config_fields=config_fields, hf_fields=hf_fields,
                gguf=GGUF)
