"""LoRA adapters through `peft`: a model loaded for training, adapters attached, saved and loaded.

Luodi's models keep Hugging Face's module names (`q_proj` ... `down_proj`) as plain `nn.Linear`
layers when loaded without the inference preparation (no fused q/k/v or gate/up, no packed
weights), so `peft.get_peft_model` wraps them as it would a transformers model, and the adapter
files it writes (`adapter_config.json`, `adapter_model.safetensors`) name the same tensors as an
adapter trained on the transformers model of the same checkpoint.

Knows models and peft; nothing of data, optimizers or the engine.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from luodi.errors import InvalidParameterError, LuodiError
# The adapter file format is the models layer's (it serves adapters unmerged); re-exported here.
from luodi.models.adapters import PROJECTIONS, AdapterError, read_adapter_config
from luodi.models.loader import LoadedModel, load_model

TRAIN_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True, slots=True)
class LoraOptions:
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = PROJECTIONS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise InvalidParameterError(
                f"--rank {self.rank!r} must be a positive integer (e.g. 8 or 16)", "rank")
        if not self.alpha > 0:
            raise InvalidParameterError(
                f"--alpha {self.alpha!r} must be a positive number (e.g. 2 × rank)", "alpha")
        unknown = [t for t in self.target_modules if t not in PROJECTIONS]
        if unknown or not self.target_modules:
            raise InvalidParameterError(
                f"--target {','.join(self.target_modules)!r}: {', '.join(unknown) or 'nothing given'} "
                f"is not a projection; choose from {','.join(PROJECTIONS)}", "target",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidParameterError(f"lora dropout {self.dropout!r} must be in [0, 1)", "dropout")


def require_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise LuodiError(
            "fine-tuning needs the `peft` package: pip install 'luodi[finetune]' (or pip install peft)"
        ) from None
    return peft


def load_for_training(spec: str, *, device: str = "auto", dtype: str = "bfloat16") -> LoadedModel:
    """The model with float weights and unfused HF-named linear layers, every parameter frozen."""
    if dtype not in TRAIN_DTYPES:
        raise InvalidParameterError(f"--dtype {dtype!r} is not one of {', '.join(TRAIN_DTYPES)}", "dtype")
    loaded = load_model(spec, device=device, dtype=dtype, for_inference=False)
    quantized = [name for name, m in loaded.model.named_modules() if hasattr(m, "scheme")]
    if quantized:
        raise InvalidParameterError(
            f"{spec!r} is quantized ({quantized[0]} ...): LoRA trains on float weights — fine-tune the "
            "float model (its .gguf or HF directory, or a `luodi convert` output) and quantize after merging",
            "model",
        )
    loaded.model.requires_grad_(False)
    return loaded


def attach_lora(model: nn.Module, options: LoraOptions) -> nn.Module:
    """`peft.get_peft_model` over the model: trainable LoRA A/B (fp32, B = 0) beside frozen weights."""
    peft = require_peft()
    config = peft.LoraConfig(
        r=options.rank, lora_alpha=options.alpha, target_modules=list(options.target_modules),
        lora_dropout=options.dropout, bias="none",
    )
    # autocast_adapter_dtype (peft's default) keeps A and B in fp32 over a bf16 model: the
    # optimizer's small updates are not lost to bf16 rounding.
    return peft.get_peft_model(model, config)


def save_adapter(peft_model: nn.Module, out: Path, base_model: str) -> Path:
    """adapter_config.json + adapter_model.safetensors (no pickle) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    peft_model.peft_config["default"].base_model_name_or_path = base_model
    # Embeddings are never adapted here; saying so also keeps peft from asking the Hugging Face Hub
    # whether `base_model` (a Luodi catalog name, to it) resized its vocabulary.
    peft_model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    return out


def load_adapter(model: nn.Module, adapter: Path) -> nn.Module:
    """The base model with the adapter at `adapter` attached (a peft model, frozen)."""
    peft = require_peft()
    read_adapter_config(adapter)
    try:
        return peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names that do not fit
        raise AdapterError(f"the adapter at {adapter} does not fit this base model: {exc}") from exc


@contextlib.contextmanager
def mixed_precision(model: nn.Module) -> Iterator[None]:
    """For a bf16/fp16 base, a scope in which each `autocast(model)` forward runs fp32 adapters in
    the base's dtype, as AMP does; a no-op for an fp32 base.

    peft otherwise casts each adapted layer's input to fp32, runs A and B in fp32 and adds the
    result in fp32 before casting back: extra passes over every projection's activations, forward
    and backward. Under autocast A and B are cast to bf16 once per forward (r × in elements) and
    the activations stay bf16; gradients still accumulate into the fp32 adapter tensors. The
    scope must also cover the backward pass (checkpointed layers recompute their forward there).
    """
    if low_precision_dtype(model) is None:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(model):
        yield


def autocast(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """Autocast for one forward pass inside `mixed_precision`. One per step, never around many:
    autocast caches its bf16 copies of the adapter weights until its outermost context exits."""
    dtype = low_precision_dtype(model)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


def low_precision_dtype(model: nn.Module) -> torch.dtype | None:
    dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The backbone's decoder layers, through a peft wrapper or not."""
    for module in model.modules():
        if isinstance(getattr(module, "layers", None), nn.ModuleList):
            return module.layers
    raise AssertionError("no decoder layers found")


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    The wrapper is set on each layer instance's `forward`, so module and parameter names (and so
    the adapter's tensor names) stay the same.
    """
    for layer in decoder_layers(model):
        layer.forward = functools.partial(_checkpointed, layer.forward)


def _checkpointed(forward: Any, *args: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args)
    return checkpoint(forward, *args, use_reentrant=False)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
