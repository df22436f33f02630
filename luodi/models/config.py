"""`ModelConfig`: the architecture of a model, in Hugging Face's names.

This module is the one place a `ModelConfig` is built: from the dictionary of an HF `config.json`,
read from a directory here or handed over by `luodi.models.gguf_load` (which translates GGUF
metadata into the same keys, through the family's `GGUFSpec`). The keys every family shares are
read here; each family file reads its own (`Family.config_fields`). It owns the shape and numerics
of a model; it knows nothing of file formats, weights or requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from luodi.errors import ModelFormatError

if TYPE_CHECKING:
    from luodi.models.family import Family


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # {"rope_type": "llama3" | "linear", "factor": ..., ...} as in HF configs; None = plain RoPE.
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # Attention over the last `sliding_window` positions on the layers `layer_types` marks as sliding:
    # every layer for Mistral; Gemma 3 interleaves local (sliding) and global layers.
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # per layer: "full_attention" | "sliding_attention"
    rope_local_base_freq: float | None = None
    query_pre_attn_scalar: float | None = None
    final_logit_softcapping: float | None = None
    partial_rotary_factor: float = 1.0  # RoPE turns the first head_dim * this channels of a head

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def attention_scale(self) -> float:
        if self.query_pre_attn_scalar is not None:
            return float(self.query_pre_attn_scalar) ** -0.5
        return self.head_dim**-0.5

    def is_sliding_layer(self, layer_idx: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer_idx] == "sliding_attention"


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _scaling_or_none(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    scaling["rope_type"] = scaling.get("rope_type") or scaling.get("type") or "default"
    return None if scaling["rope_type"] == "default" else scaling


def _rope_settings(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either config style.

    transformers < 5 writes `rope_theta` + `rope_scaling`; transformers 5 writes `rope_parameters`,
    per layer type for Gemma 3 (whose family file reads the local layers' base).
    """
    params = raw.get("rope_parameters")
    if params and "full_attention" in params:
        full = params["full_attention"]
        return float(full.get("rope_theta", 1e6)), _scaling_or_none(full)
    if params:
        return float(params.get("rope_theta", 10000.0)), _scaling_or_none(params)
    return float(raw.get("rope_theta", 10000.0)), _scaling_or_none(raw.get("rope_scaling"))


def _partial_rotary_factor(raw: dict[str, Any]) -> float:
    params = raw.get("rope_parameters") or {}
    return float(raw.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0)


def _family(model_type: str) -> Family | None:
    """The family record of `model_type`, or None for a type Luodi does not build (building it then
    fails with the list of supported ones)."""
    from luodi.models.registry import find_family  # imported here: the family files build on this module

    return find_family(model_type)


def config_from_hf_dict(raw: dict[str, Any]) -> ModelConfig:
    """Build a `ModelConfig` from the dictionary of an HF `config.json` (or `gguf_hf_config`'s).

    The fields every family reads alike are read here; the family's `config_fields` hook reads
    (or overrides with its own defaults) the rest.
    """
    if "text_config" in raw:  # multimodal wrappers (Gemma 3 4B+) keep the LM config inside.
        raw = {**raw["text_config"], "eos_token_id": raw.get("eos_token_id")}
    family = _family(raw.get("model_type", ""))
    model_type = family.model_type if family is not None else raw.get("model_type", "")
    try:
        num_heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        parsed: dict[str, Any] = dict(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=num_heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden // num_heads),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"config.json lacks a valid model dimension ({exc}); is it an LLM config?") from exc
    rope_theta, rope_scaling = _rope_settings(raw)
    parsed.update(
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", False)),
        hidden_act=str(raw.get("hidden_act") or "silu"),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos_ids(raw.get("eos_token_id")),
        final_logit_softcapping=raw.get("final_logit_softcapping"),
        partial_rotary_factor=_partial_rotary_factor(raw),
    )
    if family is not None:
        parsed.update(family.config_fields(raw, parsed))
    return ModelConfig(**parsed)


def load_hf_config(model_dir: Path) -> ModelConfig:
    path = model_dir / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{model_dir} has no config.json; an HF model directory needs one") from exc
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc})") from exc
    return config_from_hf_dict(raw)


def config_to_hf_dict(config: ModelConfig) -> dict[str, Any]:
    """The HF `config.json` dictionary of `config`; `config_from_hf_dict` reads it back unchanged.

    Written in the pre-5 transformers style (`rope_theta` + `rope_scaling`), which both major
    versions of transformers read.
    """
    family = _family(config.model_type)
    raw: dict[str, Any] = {
        "architectures": [family.architecture if family is not None else ""],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": dict(config.rope_scaling) if config.rope_scaling else None,  # a copy: readers edit it
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "hidden_act": config.hidden_act,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_ids) if len(config.eos_token_ids) != 1 else config.eos_token_ids[0],
        "final_logit_softcapping": config.final_logit_softcapping,
        "partial_rotary_factor": config.partial_rotary_factor,
    }
    if family is not None:
        raw.update(family.hf_fields(config))
    return raw
