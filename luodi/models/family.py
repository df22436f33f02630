"""`Family`: what one HF `model_type` is to Luodi — its module, its HF architecture name, how its
config fields are read and written where they differ from the common ones, and what it is in a
GGUF file (`GGUFSpec`: architecture names, tensor names, converter transforms, metadata keys).

Each family file (llama.py, mistral.py, qwen2.py, ...) declares one `FAMILY`; `luodi.models.registry`
lists them. The decoder layers declare their own structure (`LayerNorms`, the attention's
`q_norm`, `rope_index`, ...) and the model class its `sanitize` step; this record holds the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from luodi.models.config import ModelConfig
from luodi.models.gguf_spec import GGUFSpec

# (raw HF config dict, the fields read the common way) -> the fields this family reads its own way
ConfigFields = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def no_config_fields(raw: dict[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    return {}


def no_hf_fields(config: ModelConfig) -> dict[str, Any]:
    return {}


def every_layer_sliding(raw: dict[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    """Mistral's and Phi 3's window: one `sliding_window` over every layer (none when unset)."""
    if not raw.get("sliding_window"):
        return {}
    return {"sliding_window": int(raw["sliding_window"]),
            "layer_types": ("sliding_attention",) * parsed["num_hidden_layers"]}


@dataclass(frozen=True, slots=True)
class Family:
    model_type: str
    architecture: str  # HF `architectures[0]` in a config.json Luodi writes
    causal_lm: type[nn.Module]
    config_fields: ConfigFields = no_config_fields
    # Keys `config_to_hf_dict` writes beside the common ones, so that this family's fields read back.
    hf_fields: Callable[[ModelConfig], dict[str, Any]] = no_hf_fields
    aliases: tuple[str, ...] = ()  # other model_type names of the same config (Gemma 3's multimodal wrapper)
    gguf: GGUFSpec | None = None  # None: no GGUF architecture loads as this family
