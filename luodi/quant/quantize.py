"""`luodi quantize` / `luodi convert`: a float model in, Luodi's saved format out.

The steps: load the model in fp32 (un-fused, HF names), calibrate on text when the scheme needs
activation statistics (SmoothQuant's smoothing, AWQ's scaling), fold the scaling into the
preceding norms, swap every linear layer — and the token embedding — for its quantized form,
and write the directory (`luodi.quant.format`). Quantization arithmetic lives in
`weight_only` / `w8a8`; the choice of smoothing in `smoothing`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.quant.format import EMBEDDING, WEIGHTS_FILE, QuantSpec, module_classes, save_model, set_module

SCHEMES = ("int8", "int4", "w8a8")
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True, slots=True)
class QuantizeOptions:
    scheme: str  # "int8" | "int4" | "w8a8" | "none" (convert only)
    group_size: int = 32  # int4
    alpha: float | str = "auto"  # w8a8: "auto" (per layer, grid search) or a fixed alpha in [0, 1]
    awq: bool = False  # int4: activation-aware scaling from the calibration text
    calib_file: Path | None = None  # None: the calibration text bundled with Luodi
    calib_seq_len: int = 256
    calib_max_seqs: int = 32

    def __post_init__(self) -> None:
        if self.scheme not in (*SCHEMES, "none"):
            raise InvalidParameterError(f"--scheme {self.scheme!r} is not one of {', '.join(SCHEMES)}", "scheme")
        if self.group_size not in GROUP_SIZES:
            raise InvalidParameterError(
                f"--group-size {self.group_size} is not one of {', '.join(map(str, GROUP_SIZES))}", "group_size"
            )
        if self.alpha != "auto" and not (isinstance(self.alpha, float) and 0.0 <= self.alpha <= 1.0):
            raise InvalidParameterError(f"--alpha {self.alpha!r} must be 'auto' or a number in [0, 1]", "alpha")

    @property
    def needs_calibration(self) -> bool:
        return self.scheme == "w8a8" or (self.scheme == "int4" and self.awq)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"scheme": self.scheme}
        if self.scheme == "int4":
            described.update(group_size=self.group_size, awq=self.awq)
        if self.scheme == "w8a8":
            described["alpha"] = self.alpha
        if self.needs_calibration:
            described.update(calibration=str(self.calib_file) if self.calib_file else "built-in",
                             calib_seq_len=self.calib_seq_len, calib_max_seqs=self.calib_max_seqs)
        return described


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    out: Path
    scheme: str
    bytes_bf16: int  # the model stored unquantized in bf16 (what `luodi convert` writes)
    bytes_written: int  # model.safetensors as written
    seconds: float
    num_quantized: int
    choices: dict[str, dict[str, float]] = field(default_factory=dict)  # per smoothing group

    @property
    def size_ratio(self) -> float:
        return self.bytes_written / self.bytes_bf16


def quantize_model_dir(
    model_spec: str, options: QuantizeOptions, out: Path, *, progress: bool = False,
) -> QuantizeResult:
    """Quantize (or, with scheme "none", convert) `model_spec` into the saved format at `out`."""
    from luodi.models.loader import load_model

    start = time.perf_counter()
    calib_text = _read_calibration(options) if options.needs_calibration else ""
    loaded = load_model(model_spec, device="cpu", dtype="float32", for_inference=False, progress=progress)
    model, config = loaded.model, loaded.config
    bytes_bf16 = _bf16_bytes(model, config.tie_word_embeddings)
    choices = _calibrate_and_scale(model, loaded.tokenizer, options, calib_text, progress)
    modules = quantize_modules(model, options, progress=progress) if options.scheme != "none" else {}
    spec = QuantSpec(scheme=options.scheme, modules=modules, options=options.describe(),
                     report={"choices": choices}, source=model_spec)
    save_model(model, loaded.tokenizer, config, out, spec)
    return QuantizeResult(
        out=out, scheme=options.scheme, bytes_bf16=bytes_bf16, bytes_written=(out / WEIGHTS_FILE).stat().st_size,
        seconds=time.perf_counter() - start, num_quantized=len(modules), choices=choices,
    )


def _read_calibration(options: QuantizeOptions) -> str:
    from luodi.quant.texts import calibration_text

    if options.calib_file is None:
        return calibration_text()
    try:
        text = options.calib_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(
            f"--calib {str(options.calib_file)!r} is not a readable UTF-8 text file ({exc})", "calib"
        ) from exc
    if len(text.strip()) < 200:
        raise InvalidParameterError(
            f"--calib {str(options.calib_file)!r} holds too little text to calibrate on (need a few paragraphs)",
            "calib",
        )
    return text


def _bf16_bytes(model: nn.Module, tied: bool) -> int:
    return sum(
        t.numel() * 2 for name, t in model.state_dict().items() if not (tied and name.startswith("lm_head."))
    )


def _calibrate_and_scale(
    model: nn.Module, tokenizer: Any, options: QuantizeOptions, text: str, progress: bool,
) -> dict[str, dict[str, float]]:
    """Run calibration when the scheme needs it, fold the chosen scaling into the model; the choices."""
    if not options.needs_calibration:
        return {}
    from luodi.quant.calibration import collect_activation_stats
    from luodi.quant.smoothing import awq_scale_model, smooth_model
    from luodi.quant.texts import token_windows

    sequences = token_windows(tokenizer.encode(text), options.calib_seq_len, options.calib_max_seqs)
    stats = collect_activation_stats(model, sequences, progress=progress)
    if options.scheme == "w8a8":
        picked = smooth_model(model, stats, options.alpha)
        return {
            group: {"alpha": c.alpha, "mse": c.mse, "mse_at_half": c.mse_at_half} for group, c in picked.items()
        }
    betas = awq_scale_model(model, stats, options.group_size)
    return {group: {"beta": beta} for group, beta in betas.items()}


def quantize_modules(model: nn.Module, options: QuantizeOptions, *, progress: bool = False) -> dict[str, dict]:
    """Swap the decoder's linear layers, the embedding and the lm_head for quantized modules.

    Returns quant.json's `modules`: name -> {"scheme", options}. The embedding and lm_head of a
    W8A8 model are int8 weight-only (they have no preceding norm to smooth into, and a vocabulary
    projection is where activation quantization hurts most).
    """
    from luodi.quant.linear import QuantEmbedding

    classes = module_classes()
    layer_scheme = options.scheme
    table_scheme = "int8" if options.scheme == "w8a8" else options.scheme
    modules: dict[str, dict] = {}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.layers.")]
    for name, linear in _track(linears, "quantizing layers", progress):
        entry = _entry(layer_scheme, linear.in_features, options.group_size)
        set_module(model, name, classes[entry["scheme"]].from_float(linear, **_options_of(entry)))
        modules[name] = entry
    embedding = model.get_submodule(EMBEDDING)
    entry = _entry(table_scheme, embedding.weight.shape[1], options.group_size)
    table = classes[entry["scheme"]].from_float(_as_linear(embedding.weight), **_options_of(entry))
    set_module(model, EMBEDDING, QuantEmbedding(table))
    modules[EMBEDDING] = entry
    if model.config.tie_word_embeddings:
        model.lm_head = table
    else:
        entry = _entry(table_scheme, model.lm_head.in_features, options.group_size)
        model.lm_head = classes[entry["scheme"]].from_float(model.lm_head, **_options_of(entry))
        modules["lm_head"] = entry
    return modules


def _entry(scheme: str, in_features: int, group_size: int) -> dict[str, Any]:
    """A module's scheme and options; int4 falls back to the largest group size that divides K."""
    if scheme != "int4":
        return {"scheme": scheme}
    fitting = [g for g in GROUP_SIZES if g <= group_size and in_features % g == 0]
    if not fitting:
        return {"scheme": "int8"}  # K not a multiple of 32: per-channel int8 instead
    return {"scheme": "int4", "group_size": max(fitting)}


def _options_of(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "scheme"}


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return linear


def _track(items: list, description: str, progress: bool) -> Iterable:
    if not progress:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, console=Console(stderr=True), transient=True)
