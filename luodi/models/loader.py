"""Loading a model by name or path: a catalog name, a `.gguf` file, or an HF safetensors directory.

Resolves the spec, reads the config and weights in the right format, builds the family's module
on the chosen device and dtype, and opens the tokenizer. Knows formats and devices; nothing of
requests or serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.loading.catalog import resolve_model
from luodi.loading.gguf import GGUFFile
from luodi.loading.safetensors import safetensors_state_dict
from luodi.loading.tokenizer import Tokenizer
from luodi.models.config import ModelConfig, config_from_hf_dict, load_hf_config
from luodi.models.gguf_load import gguf_hf_config, gguf_state_dict, gguf_tokenizer
from luodi.models.inference import prepare_for_inference
from luodi.models.registry import build_model
from luodi.progress import track_if
from luodi.quant.format import is_saved_model, quantized_structure, read_quant_spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: nn.Module
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    name: str


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise InvalidParameterError(f"--device {device!r} is not one of auto, cpu, cuda", param="device")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu",
                                    param="device")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """None picks the fastest measured dtype: bf16 on CPU (see benchmarks/engine_speed.py), fp16 on CUDA."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    if dtype not in DTYPES:
        raise InvalidParameterError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}", param="dtype")
    return DTYPES[dtype]


def load_config_and_weights(
    path: Path, dtype: torch.dtype | None = None,
) -> tuple[ModelConfig, Iterator[tuple[str, torch.Tensor]], int | None]:
    """(config, iterator of (HF name, tensor), number of tensors if known) for a `.gguf` or HF directory.

    `dtype` lets quantized GGUF tensors be dequantized straight into the model's dtype.
    """
    if path.is_file():
        gguf = GGUFFile(path)
        config = config_from_hf_dict(gguf_hf_config(gguf))
        return config, gguf_state_dict(gguf, config, dtype), len(gguf.tensors)
    return load_hf_config(path), safetensors_state_dict(path), None


def load_tokenizer(path: Path) -> Tokenizer:
    return gguf_tokenizer(GGUFFile(path)) if path.is_file() else Tokenizer.from_hf_dir(path)


def saved_model_structure(path: Path) -> Callable[[nn.Module], None] | None:
    """For Luodi's saved format (a directory with quant.json): the quantized modules to build."""
    if not is_saved_model(path):
        return None
    return quantized_structure(read_quant_spec(path), path)


def load_model(
    spec: str, *, device: str = "auto", dtype: str | None = None, for_inference: bool = True,
    progress: bool = False,
) -> LoadedModel:
    """`for_inference` swaps in the fastest inference-only kernels (no training afterwards)."""
    path = resolve_model(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config, weights, num_tensors = load_config_and_weights(path, torch_dtype)
    weights = track_if(weights, f"loading {spec}", progress, total=num_tensors)
    tokenizer = load_tokenizer(path)
    model = build_model(config, weights, dtype=torch_dtype, device=torch_device,
                        transform=saved_model_structure(path))
    if for_inference:
        prepare_for_inference(model)
    return LoadedModel(model, tokenizer, config, path, spec)
