"""The families Luodi builds (one `Family` per HF `model_type`, declared in its own file), and how
a model is built from config + weights.

Models are built on the `meta` device and take the loaded tensors by assignment
(`load_state_dict(assign=True)`), so a memory-mapped weight is not copied unless its dtype or
device changes. Loading is strict: every tensor the model has must come, and nothing else
(bar the few a checkpoint may carry for nothing, `_is_unused`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from luodi.errors import ModelFormatError, UnsupportedArchitectureError
from luodi.models import gemma3, llama, mistral, phi3, qwen2, qwen3
from luodi.models.config import ModelConfig
from luodi.models.family import Family
from luodi.models.layers import RotaryEmbedding, rope_inv_freq

FAMILIES: dict[str, Family] = {
    module.FAMILY.model_type: module.FAMILY for module in (llama, mistral, qwen2, qwen3, gemma3, phi3)
}
_ALIASES = {alias: family for family in FAMILIES.values() for alias in family.aliases}


def find_family(model_type: str) -> Family | None:
    return FAMILIES.get(model_type) or _ALIASES.get(model_type)


def model_class(config: ModelConfig) -> type[nn.Module]:
    family = find_family(config.model_type)
    if family is None:
        supported = ", ".join(sorted(FAMILIES))
        raise UnsupportedArchitectureError(
            f"model type {config.model_type!r} is not supported (supported: {supported})"
        )
    return family.causal_lm


def build_model(
    config: ModelConfig, weights: Iterable[tuple[str, torch.Tensor]], *, dtype: torch.dtype,
    device: torch.device, transform: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Instantiate the family's module and assign `weights` (HF names) converted to dtype/device.

    `transform` reshapes the module on `meta` before the weights arrive (a quantized model swaps
    its linear layers for quantized ones); tensors of quantized modules keep their stored dtypes.
    """
    cls = model_class(config)
    with torch.device("meta"):
        model = cls(config)
        if transform is not None:
            transform(model)
    expected = dict(model.state_dict())
    if config.tie_word_embeddings:  # the embedding is the head: tie_weights() shares it below
        expected = {k: v for k, v in expected.items() if not k.startswith("lm_head.")}
    fixed_dtype = _quantized_tensor_names(model)
    state, unexpected = {}, []
    for name, tensor in cls.sanitize(config, weights):
        if name not in expected:
            if not _is_unused(name, config):
                unexpected.append(name)
            continue
        target = expected[name].dtype if name in fixed_dtype else dtype
        _check_tensor(name, tensor, expected[name].shape, target)
        state[name] = _aligned(tensor.to(device=device, dtype=target))
    _check_names(config, unexpected, sorted(set(expected) - set(state)))
    model.load_state_dict(state, strict=False, assign=True)
    for module in model.modules():
        if hasattr(module, "scheme"):  # built as placeholders: their float outputs take the model's dtype
            module.dtype = dtype
    model.tie_weights()
    _materialize_buffers(model, device)
    return model.eval()


def _is_unused(name: str, config: ModelConfig) -> bool:
    """Tensors some checkpoints carry that the model legitimately does without: rotary tables
    (older HF checkpoints saved `inv_freq`; it is recomputed from the config) and a tied lm_head
    written anyway (the embedding is the head)."""
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return config.tie_word_embeddings and name.startswith("lm_head.")


def _check_tensor(name: str, tensor: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ModelFormatError(
            f"weight {name} has shape {tuple(tensor.shape)}, the config implies {tuple(shape)}"
        )
    if tensor.dtype != dtype and not (tensor.is_floating_point() and dtype.is_floating_point):
        raise ModelFormatError(f"weight {name} is stored as {tensor.dtype}, expected {dtype}")


def _check_names(config: ModelConfig, unexpected: list[str], missing: list[str]) -> None:
    """Loading is strict: a tensor the family does not expect (say a bias it has no place for) would
    otherwise be dropped without a word, and the model would run, wrongly."""
    problems = []
    if unexpected:
        problems.append(f"holds {_some(sorted(unexpected))} that a {config.model_type} model with this "
                        "config does not expect")
    if missing:
        problems.append(f"lacks {_some(missing)} that it needs")
    if problems:
        raise ModelFormatError(
            f"the checkpoint {' and '.join(problems)}; check that config.json matches the weights "
            "and that Luodi implements every part of this model"
        )


def _some(names: list[str], shown: int = 5) -> str:
    """The count and the first `shown` names: `2 tensor(s) (a, b)`, `9 tensor(s) (a, ..., e and 4 more)`."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} tensor(s) ({', '.join(names[:shown])}{more})"


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """A copy when `tensor` starts off a 64-byte boundary: safetensors places tensors 8-byte aligned,
    and some CPU kernels (torch 2.13's `_weight_int8pack_mm`) crash on such a buffer."""
    return tensor.clone() if tensor.device.type == "cpu" and tensor.data_ptr() % 64 else tensor


def _quantized_tensor_names(model: nn.Module) -> set[str]:
    """Tensors of quantized modules (they carry a `scheme`): integers and scales keep their stored
    dtypes; a bias is a float like any other and takes the model's."""
    return {
        f"{name}.{tensor_name}" for name, module in model.named_modules() if hasattr(module, "scheme")
        for tensor_name, _ in module.named_buffers() if not tensor_name.endswith("bias")
    }


def _materialize_buffers(model: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers (RoPE frequencies) were made on `meta`: recompute them for real."""
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            head_dim = module.inv_freq.shape[0] * 2
            module.inv_freq = rope_inv_freq(head_dim, module.rope_base, module.rope_scaling).to(device)
