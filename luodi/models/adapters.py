"""Serving LoRA adapters unmerged: many adapters over one base model, chosen token by token.

An adapter directory as peft writes it (`adapter_config.json`, `adapter_model.safetensors`) is
read with safetensors alone. Each adapted linear layer is wrapped in a `LoraLinear` computing
base(x) + scale · (x Aᵢᵀ) Bᵢᵀ for the tokens whose request uses adapter i. Inference fuses q/k/v
into `qkv_proj` and gate/up into `gate_up_proj` (`luodi.models.inference`); their adapters are
fused the same way — A matrices stacked, B matrices placed block-diagonally — so the fused output
is exactly the concatenation of the per-projection outputs.

Which adapter each token of a forward pass uses is set by the caller around the call
(`AdapterSet.use`); without it every token runs the base model, at the base model's speed.
Knows torch modules and the peft file format; nothing of requests, engines or training.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from luodi.errors import LuodiError
from luodi.models import native_stack

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_PEFT_PREFIX = "base_model.model."
LoraPair = tuple[torch.Tensor, torch.Tensor]  # (A [r, in], B [out, r])


class AdapterError(LuodiError):
    """An adapter directory that is missing, incomplete, or does not fit the base model."""


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """One adapter's tensors: module path (HF name) -> (A [r, in], B [out, r] with the scale folded in)."""

    name: str
    path: Path
    weights: dict[str, LoraPair]


def read_adapter_config(adapter: Path) -> dict:
    for file in (adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS):
        if not file.is_file():
            raise AdapterError(
                f"{adapter} is not a LoRA adapter: {file.name} is missing — pass the --out directory "
                "of `luodi finetune`"
            )
    config_file = adapter / ADAPTER_CONFIG
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{config_file} is not readable JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterError(f"{config_file} is not a LoRA adapter config (peft_type {kind!r})")
    return config


def read_adapter(name: str, path: str | Path) -> LoraAdapter:
    """Read an adapter's A/B tensors (no peft needed); scale = alpha / r (alpha / √r with rsLoRA)."""
    path = Path(path)
    config = read_adapter_config(path)
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError(f"{path}: per-layer rank_pattern / alpha_pattern adapters are not supported")
    rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight") or module.rsplit(".", 1)[-1] not in PROJECTIONS:
            raise AdapterError(
                f"{path}: tensor {key!r} is not a LoRA A/B of a projection ({', '.join(PROJECTIONS)})")
        pairs.setdefault(module, {})[kind[0]] = tensor.float()
    weights = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{path}: {module} has lora_{'A' if 'A' in ab else 'B'} but not its pair")
        weights[module] = (ab["A"], ab["B"] * scale)
    return LoraAdapter(name, path, weights)


class AdapterSet:
    """The adapters attached to a model, and — during one forward — each adapter's token rows."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.rows: list[torch.Tensor | None] | None = None  # per adapter: its tokens' rows, or None

    def index(self, name: str) -> int:
        return self.names.index(name)

    @contextlib.contextmanager
    def use(self, token_adapters: torch.Tensor | None) -> Iterator[None]:
        """Run the forward inside with token t on adapter `token_adapters[t]` ([T] long; -1 = base)."""
        if token_adapters is None:
            yield
            return
        rows = [(token_adapters == i).nonzero().squeeze(1) for i in range(len(self.names))]
        self.rows = [r if r.numel() else None for r in rows]
        try:
            yield
        finally:
            self.rows = None


class LoraLinear(nn.Module):
    """A linear layer (float, packed or quantized) plus one optional low-rank update per adapter."""

    def __init__(self, base: nn.Module, adapters: AdapterSet, lora: list[LoraPair | None]) -> None:
        super().__init__()
        self.base = base
        self.adapters = adapters
        self.lora = lora  # per adapter: (A [r, in], B [out, r]) in the activation dtype, or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # [T, out]
        rows = self.adapters.rows
        if rows is None:
            return out
        for lora, index in zip(self.lora, rows, strict=True):
            if lora is None or index is None:
                continue
            a, b = lora
            delta = (x.index_select(0, index) @ a.t()) @ b.t()  # [n, r] -> [n, out]
            out.index_add_(0, index, delta.to(out.dtype))
        return out

    def extra_repr(self) -> str:
        return f"adapters={sum(lora is not None for lora in self.lora)}"


def attach_adapters(model: nn.Module, adapters: list[LoraAdapter]) -> AdapterSet:
    """Wrap every adapted linear layer of an inference-ready model; sets and returns `model.adapters`."""
    if getattr(model, "adapters", None) is not None:
        raise AdapterError("this model already has adapters attached; attach them all in one call")
    names = tuple(a.name for a in adapters)
    if len(set(names)) != len(names):
        raise AdapterError(f"adapter names must be unique (got {', '.join(names)})")
    adapter_set = AdapterSet(names)
    dtype = next(model.parameters()).dtype
    used: list[set[str]] = [set() for _ in adapters]
    for path, parent in list(model.named_modules()):
        prefix = f"{path}." if path else ""
        for child_name, parts in [*FUSED.items(), *((p, (p,)) for p in PROJECTIONS)]:
            child = getattr(parent, child_name, None)
            if not isinstance(child, nn.Module) or isinstance(child, LoraLinear):
                continue
            lora = []
            widths, device = _widths(parent, parts, child), _device_of(child)
            for adapter, seen in zip(adapters, used, strict=True):
                pieces = [adapter.weights.get(prefix + p) for p in parts]
                seen.update(prefix + p for p, piece in zip(parts, pieces, strict=True) if piece is not None)
                where = f"{adapter.name} at {prefix}{child_name}"
                lora.append(_fuse(pieces, child.in_features, widths, where, device, dtype))
            if any(lora):
                setattr(parent, child_name, LoraLinear(child, adapter_set, lora))
    for adapter, seen in zip(adapters, used, strict=True):
        missing = sorted(set(adapter.weights) - seen)
        if missing:
            raise AdapterError(f"adapter {adapter.name} ({adapter.path}) names {missing[0]}, "
                               "which this model does not have: it was trained for another model")
    native_stack.detach(model)  # the native stack reads the base layers only
    model.adapters = adapter_set
    return adapter_set


def _widths(parent: nn.Module, parts: tuple[str, ...], layer: nn.Module) -> list[int]:
    """Each fused projection's share of the layer's output rows."""
    out_features = layer.out_features
    if parts == FUSED["qkv_proj"]:
        q, kv = parent.num_heads * parent.head_dim, parent.num_kv_heads * parent.head_dim
        return [q, kv, kv]
    return [out_features // len(parts)] * len(parts)


def _fuse(pieces: list[LoraPair | None], in_features: int, widths: list[int], where: str,
          device: torch.device, dtype: torch.dtype) -> LoraPair | None:
    """One (A, B) for a layer that fuses `pieces`' projections: A stacked, B block-diagonal, a
    missing projection a zero-rank block (its rows of the output are left as the base computes them)."""
    if all(piece is None for piece in pieces):
        return None
    for piece, width in zip(pieces, widths, strict=True):
        if piece is not None and (piece[0].shape[1] != in_features or piece[1].shape[0] != width):
            raise AdapterError(
                f"adapter {where}: A/B shapes {tuple(piece[0].shape)}/{tuple(piece[1].shape)} do not fit "
                f"the layer ({width} outputs): it was trained for another model"
            )
    a = torch.cat([p[0] if p is not None else torch.zeros(0, in_features) for p in pieces])
    b = torch.block_diag(*[p[1] if p is not None else torch.zeros(w, 0)
                           for p, w in zip(pieces, widths, strict=True)])
    return a.to(device, dtype).contiguous(), b.to(device, dtype).contiguous()


def _device_of(layer: nn.Module) -> torch.device:
    for tensor in [*layer.parameters(), *layer.buffers()]:
        return tensor.device
    for value in vars(layer).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
