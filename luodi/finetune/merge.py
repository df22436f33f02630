"""Merging a LoRA adapter into its base model: W' = W + (alpha / r) · B @ A, written in Luodi's saved format.

The base loads in fp32, peft's `merge_and_unload` folds each adapter into its linear layer (so the
merged module tree is the plain model again, HF names intact), and the result is written exactly
as `luodi convert` writes a float model — so `luodi quantize --model OUT` and `luodi generate
--model OUT` take it like any other. Knows models, peft and the saved format; nothing of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from luodi.errors import InvalidParameterError
from luodi.finetune.lora import load_adapter, load_for_training, read_adapter_config
from luodi.models.config import config_to_hf_dict
from luodi.models.loader import DTYPES
from luodi.quant.format import QuantSpec, save_model

SAVE_DTYPES = ("bfloat16", "float32")


@dataclass(frozen=True, slots=True)
class MergeResult:
    out: Path
    num_merged: int  # linear layers that received an adapter


def merge_adapter(
    model: str, adapter: str | Path, out: str | Path, *, dtype: str = "bfloat16",
) -> MergeResult:
    """Write base `model` + the adapter at `adapter` to `out`; float tensors stored as `dtype`.

    bf16 (the default, as `luodi convert`) halves the file; float32 keeps the merged weights exact.
    """
    if dtype not in SAVE_DTYPES:
        raise InvalidParameterError(f"--dtype {dtype!r} is not one of {', '.join(SAVE_DTYPES)}", "dtype")
    adapter, out = Path(adapter), Path(out)
    adapter_config = read_adapter_config(adapter)
    loaded = load_for_training(model, device="cpu", dtype="float32")
    peft_model = load_adapter(loaded.model, adapter)
    num_merged = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
    with torch.no_grad():
        merged = peft_model.merge_and_unload()
    options = {"scheme": "none", "merged_adapter": str(adapter), "lora_rank": adapter_config.get("r"),
               "lora_alpha": adapter_config.get("lora_alpha")}
    spec = QuantSpec(scheme="none", options=options, source=model)
    save_model(merged, loaded.tokenizer, config_to_hf_dict(loaded.config), out, spec, dtype=DTYPES[dtype])
    return MergeResult(out=out, num_merged=num_merged)
