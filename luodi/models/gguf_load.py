"""A GGUF file read through its family: its HF config dictionary, its weights in HF terms, its
tokenizer.

`luodi.loading.gguf` reads the file and the metadata every architecture shares; the family whose
`GGUFSpec` (`Family.gguf`) names the file's `general.architecture` adds the rest: `model_type`, its
own keys, its tensor names and the converter transforms to undo. Knows no family by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from luodi.errors import UnsupportedArchitectureError
from luodi.loading.gguf import ArchMetadata, GGUFFile, gguf_common_config, gguf_tensors
from luodi.loading.tokenizer import Tokenizer
from luodi.models.config import ModelConfig
from luodi.models.family import Family
from luodi.models.registry import FAMILIES

_GGUF_FAMILIES = {arch: family for family in FAMILIES.values() if family.gguf is not None
                  for arch in family.gguf.architectures}


def gguf_family(f: GGUFFile) -> Family:
    """The family whose GGUF spec reads the file's `general.architecture`."""
    arch = f.metadata.get("general.architecture")
    if arch not in _GGUF_FAMILIES:
        raise UnsupportedArchitectureError(
            f"{f.path} holds a {arch!r} model; supported GGUF architectures are {sorted(_GGUF_FAMILIES)}"
        )
    return _GGUF_FAMILIES[arch]


def gguf_hf_config(f: GGUFFile) -> dict[str, Any]:
    """The HF `config.json` dictionary (transformers' keys) that the file's metadata and tensor
    names describe, for `luodi.models.config.config_from_hf_dict`."""
    family = gguf_family(f)
    assert family.gguf is not None  # gguf_family only finds families with a spec
    meta = ArchMetadata(f)
    common = {"model_type": family.model_type, **gguf_common_config(meta)}
    return {**common, **family.gguf.config_fields(meta, common)}


def gguf_state_dict(
    f: GGUFFile, config: ModelConfig, dtype: torch.dtype | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every weight, in HF semantics, for the model's `sanitize` and
    `load_state_dict(assign=True)`. Tensors are float32 (quantized ones in `dtype` if given), or
    zero-copy F16/BF16 views where the file stores them so and no transform applies."""
    spec = gguf_family(f).gguf
    assert spec is not None
    return spec.hf_weights(config, gguf_tensors(f, dtype))


def gguf_tokenizer(f: GGUFFile) -> Tokenizer:
    """The file's tokenizer, ending generation on every EOS id its config names (Gemma's <end_of_turn>
    beside the file's EOS), as HF's generation_config does."""
    return Tokenizer.from_gguf(f, extra_eos_ids=gguf_hf_config(f)["eos_token_id"])
