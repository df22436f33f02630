"""Reading Hugging Face safetensors checkpoints (single file or sharded), memory-mapped.

Knows files and tensor names only; it yields tensors under the checkpoint's own (HF) names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from luodi.errors import ModelFormatError


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's files: those named by `model.safetensors.index.json`, else `*.safetensors`."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelFormatError(f"{index} is not a valid safetensors index ({exc})") from exc
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{model_dir} holds no .safetensors weights; convert the model or pass a .gguf")
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise ModelFormatError(f"{model_dir} is missing shard(s) {', '.join(missing)}; copy the whole checkpoint")
    return files


def safetensors_state_dict(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(model_dir):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as exc:
            raise ModelFormatError(f"{path} is not a readable safetensors file ({exc}); re-copy it") from exc
