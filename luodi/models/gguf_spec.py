"""`GGUFSpec`: what one family is in a GGUF file, declared in its family file.

Owns the llama-style tensor-name table that llama.cpp's converter writes for most architectures
(families extend it: Gemma 3's `ffn_norm`, Phi 3's packed `attn_qkv`) and the record a family
fills in: the `general.architecture` names it reads, its table, the converter transforms it undoes
and the metadata keys of its own. The file format and the metadata every architecture shares are
`luodi.loading.gguf`'s; finding the family of a file is `luodi.models.gguf_load`'s.
Reference: gguf-py `tensor_mapping.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from luodi.errors import UnsupportedArchitectureError
from luodi.loading.gguf import ArchMetadata
from luodi.models.config import ModelConfig

Weights = Iterable[tuple[str, torch.Tensor]]
# (the file's metadata, the common HF config keys) -> the keys this family adds or overrides
GGUFConfigFields = Callable[[ArchMetadata, dict[str, Any]], dict[str, Any]]
# (config, (HF name, tensor) as stored) -> (HF name, tensor) in HF semantics
GGUFSanitize = Callable[[ModelConfig, Weights], Iterable[tuple[str, torch.Tensor]]]

# GGUF name (after `blk.N.`) -> HF name (after `model.layers.N.`).
LAYER_NAMES: Mapping[str, str] = MappingProxyType({
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
})
GLOBAL_NAMES: Mapping[str, str] = MappingProxyType({
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
})
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def no_gguf_fields(meta: ArchMetadata, common: dict[str, Any]) -> dict[str, Any]:
    return {}


def as_stored(config: ModelConfig, weights: Weights) -> Weights:
    return weights


@dataclass(frozen=True, slots=True)
class GGUFSpec:
    architectures: tuple[str, ...]  # the `general.architecture` values this family reads
    layer_names: Mapping[str, str] = field(default_factory=lambda: LAYER_NAMES)
    config_fields: GGUFConfigFields = no_gguf_fields
    sanitize: GGUFSanitize = as_stored  # undoes llama.cpp's converter transforms, on HF names
    # Tensors with no HF parameter, which `config_fields` reads into the config (RoPE factors).
    config_tensors: frozenset[str] = frozenset()

    def hf_name(self, gguf_name: str) -> str | None:
        """The HF parameter name of a GGUF tensor, or None for one of `config_tensors`."""
        if gguf_name in self.config_tensors:
            return None
        base, _, suffix = gguf_name.rpartition(".")
        if base in GLOBAL_NAMES and suffix in ("weight", "bias"):
            return f"{GLOBAL_NAMES[base]}.{suffix}"
        match = _BLOCK_RE.fullmatch(gguf_name)
        if match is None or match.group(2) not in self.layer_names:
            raise UnsupportedArchitectureError(
                f"GGUF tensor {gguf_name!r} has no equivalent in Luodi's {'/'.join(self.architectures)} "
                "name table; the model has parts Luodi does not implement"
            )
        layer, part, suffix = match.groups()
        return f"model.layers.{layer}.{self.layer_names[part]}.{suffix}"

    def hf_weights(self, config: ModelConfig, gguf_weights: Weights) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor) in HF semantics from the file's (GGUF name, tensor) pairs."""
        renamed = ((name, tensor) for gguf_name, tensor in gguf_weights
                   if (name := self.hf_name(gguf_name)) is not None)
        yield from self.sanitize(config, renamed)
