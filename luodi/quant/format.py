"""Luodi's saved model format: one directory that loads on CPU or CUDA, quantized or not.

    config.json          HF model config (so the directory is also an HF checkpoint when unquantized)
    tokenizer.json, tokenizer_config.json, chat_template.jinja   the tokenizer, HF layout
    quant.json           how each module is stored: scheme and options per module, and the report
    model.safetensors    float tensors in bf16; quantized modules as packed integers + scales

No pickle anywhere. This module owns the files and the mapping from `quant.json` to module
classes; the numerics live in `weight_only`, `w8a8` and `linear`. It knows no model family: the
model's config arrives as the HF `config.json` dictionary (`luodi.models.config.config_to_hf_dict`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from luodi.errors import InvalidParameterError, ModelFormatError
from luodi.loading.tokenizer import Tokenizer

QUANT_FILE = "quant.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
SCHEME_NAMES = ("none", "int8", "int4", "w8a8")
EMBEDDING = "model.embed_tokens"


@dataclass(frozen=True, slots=True)
class QuantSpec:
    """The content of quant.json. `modules` maps a module name to {"scheme": ..., options...}."""

    scheme: str
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps({"format": "luodi", **asdict(self)}, indent=2, ensure_ascii=False) + "\n"


def module_classes() -> dict[str, type[nn.Module]]:
    """Scheme name -> the module class that stores and runs it (imported late: they pull kernels)."""
    from luodi.quant.linear import Int4Linear, Int8Linear
    from luodi.quant.w8a8 import W8A8Linear

    return {"int8": Int8Linear, "int4": Int4Linear, "w8a8": W8A8Linear}


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / QUANT_FILE).is_file()


def read_quant_spec(path: Path) -> QuantSpec:
    file = path / QUANT_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{file} is not readable JSON ({exc}); re-create it with `luodi quantize`") from exc
    if not isinstance(raw, dict) or raw.get("format") != "luodi":
        raise ModelFormatError(f"{file} is not a Luodi quant.json (no \"format\": \"luodi\")")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{file} has format_version {version!r}; this Luodi reads version {FORMAT_VERSION} — "
            "upgrade Luodi or re-create the model"
        )
    scheme = raw.get("scheme")
    if scheme not in SCHEME_NAMES:
        raise ModelFormatError(f"{file}: scheme {scheme!r} is not one of {', '.join(SCHEME_NAMES)}")
    modules = raw.get("modules", {})
    if not isinstance(modules, dict):
        raise ModelFormatError(f"{file}: \"modules\" must map module names to their scheme")
    for name, entry in modules.items():
        if not isinstance(entry, dict) or entry.get("scheme") not in SCHEME_NAMES[1:]:
            raise ModelFormatError(f"{file}: module {name!r} has no valid scheme ({entry!r})")
    return QuantSpec(
        scheme=scheme, modules=modules, options=dict(raw.get("options") or {}),
        report=dict(raw.get("report") or {}), source=str(raw.get("source", "")), format_version=version,
    )


# -- building the stored structure on the meta device, before the weights are assigned -----------


def quantized_structure(spec: QuantSpec, path: Path) -> Callable[[nn.Module], None]:
    """A transform for `build_model`: swap each module `spec` names for an empty quantized one."""

    def transform(model: nn.Module) -> None:
        classes = module_classes()
        for name, entry in spec.modules.items():
            options = {k: v for k, v in entry.items() if k != "scheme"}
            cls = classes[entry["scheme"]]
            if name == EMBEDDING:
                _swap_embedding(model, cls, options, path)
            else:
                _swap_linear(model, name, cls, options, path)

    return transform


def _module(model: nn.Module, name: str, path: Path) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelFormatError(
            f"{path / QUANT_FILE} names module {name!r}, which the model in config.json does not have: "
            "quant.json and config.json do not match; re-create the model"
        ) from None


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _empty(cls: type, in_features: int, out_features: int, bias: bool, options: dict[str, Any],
           where: str) -> nn.Module:
    try:
        return cls.empty(in_features, out_features, bias=bias, dtype=torch.float32, device="meta", **options)
    except TypeError:
        raise ModelFormatError(f"{where}: options {options} do not fit scheme {cls.scheme!r}") from None
    except InvalidParameterError as exc:  # an option of the right name with a value out of range
        raise ModelFormatError(f"{where}: {exc}; re-create the model") from None


def _swap_linear(model: nn.Module, name: str, cls: type, options: dict[str, Any], path: Path) -> None:
    linear = _module(model, name, path)
    if not isinstance(linear, nn.Linear):
        raise ModelFormatError(f"{path / QUANT_FILE} quantizes {name!r}, which is not a linear layer")
    set_module(model, name, _empty(cls, linear.in_features, linear.out_features, linear.bias is not None,
                                   options, f"{path / QUANT_FILE} module {name!r}"))


def _swap_embedding(model: nn.Module, cls: type, options: dict[str, Any], path: Path) -> None:
    from luodi.quant.linear import QuantEmbedding

    embedding = _module(model, EMBEDDING, path)
    if not isinstance(embedding, nn.Embedding):
        raise ModelFormatError(f"{path / QUANT_FILE} quantizes {EMBEDDING!r}, which is not an embedding")
    vocab, hidden = embedding.weight.shape
    table = _empty(cls, hidden, vocab, False, options, f"{path / QUANT_FILE} module {EMBEDDING!r}")
    set_module(model, EMBEDDING, QuantEmbedding(table))


# -- writing -----------------------------------------------------------------------------------------


def stored_state_dict(model: nn.Module, is_tied: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """What goes into model.safetensors: float tensors cast to `dtype`, quantized buffers as they are.

    A tied lm_head (`is_tied`) is the embedding: stored once, under the embedding's name.
    """
    quantized = {
        f"{name}.{buffer}" for name, module in model.named_modules() if hasattr(module, "scheme")
        for buffer, _ in module.named_buffers(recurse=False)
    }
    state = {}
    for name, tensor in model.state_dict().items():
        if is_tied and name.startswith("lm_head."):
            continue
        if name not in quantized and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.detach().contiguous().cpu()
    return state


def save_model(
    model: nn.Module, tokenizer: Tokenizer, hf_config: dict[str, Any], out: Path, spec: QuantSpec,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write the saved format to `out` (created; existing files of the format are replaced).

    `hf_config` is the model's HF `config.json` dictionary, written as it is.
    """
    out.mkdir(parents=True, exist_ok=True)
    state = stored_state_dict(model, bool(hf_config.get("tie_word_embeddings")), dtype)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save(out)
    (out / QUANT_FILE).write_text(spec.to_json(), encoding="utf-8")
    return out
