"""`luodi quantize` / `luodi convert`: a float model in, Luodi's saved format out.

The steps: load the model in fp32 (un-fused, HF names), calibrate on text when the scheme needs
activation statistics (SmoothQuant's smoothing, AWQ's scaling, GPTQ's input Gram matrices), fold
the scaling into the preceding norms, swap every linear layer — and the token embedding — for its
quantized form, and write the directory (`luodi.quant.format`). Quantization arithmetic lives in
`luodi.quant.weight_only` / `luodi.quant.w8a8` and `gptq`; the choice of smoothing in `smoothing`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.models.config import config_to_hf_dict
from luodi.models.loader import load_model
from luodi.progress import status_if, track_if
from luodi.quant.format import EMBEDDING, WEIGHTS_FILE, QuantSpec, module_classes, save_model, set_module
from luodi.quant.weight_only import SCALE_BITS, pick_scale_bits

SCHEMES = ("int8", "int4", "w8a8")
INT4_METHODS = ("gptq", "rtn")  # error feedback from calibration inputs | plain round-to-nearest
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True, slots=True)
class QuantizeOptions:
    scheme: str  # "int8" | "int4" | "w8a8" | "none" (convert only)
    group_size: int = 32  # int4
    alpha: float | str = "auto"  # w8a8: "auto" (per layer, grid search) or a fixed alpha in [0, 1]
    awq: bool = False  # int4: activation-aware scaling from the calibration text
    method: str = "gptq"  # int4: one of INT4_METHODS
    # int4: each group's scale and min as 8-bit codes (8), fp16 (16), or per layer whichever costs
    # little ("auto": codes unless the layer's weights already sit on a 4-bit grid)
    scale_bits: int | str = "auto"
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
        if self.scale_bits not in (*SCALE_BITS, "auto"):
            raise InvalidParameterError(
                f"--scale-bits {self.scale_bits!r} is not one of auto, {', '.join(map(str, SCALE_BITS))}",
                "scale_bits",
            )
        if self.method not in INT4_METHODS:
            raise InvalidParameterError(f"--method {self.method!r} is not one of {', '.join(INT4_METHODS)}", "method")
        if self.alpha != "auto" and not (isinstance(self.alpha, float) and 0.0 <= self.alpha <= 1.0):
            raise InvalidParameterError(f"--alpha {self.alpha!r} must be 'auto' or a number in [0, 1]", "alpha")

    @property
    def needs_calibration(self) -> bool:
        return self.scales_activations or self.uses_gptq

    @property
    def scales_activations(self) -> bool:
        """Whether a scaling is folded into the norms from activation statistics (SmoothQuant, AWQ)."""
        return self.scheme == "w8a8" or (self.scheme == "int4" and self.awq)

    @property
    def uses_gptq(self) -> bool:
        return self.scheme == "int4" and self.method == "gptq"

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"scheme": self.scheme}
        if self.scheme == "int4":
            described.update(group_size=self.group_size, scale_bits=self.scale_bits, method=self.method,
                             awq=self.awq)
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
    options: dict[str, Any] = field(default_factory=dict)  # QuantizeOptions.describe(), as in quant.json
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # quant.json's modules

    @property
    def size_ratio(self) -> float:
        return self.bytes_written / self.bytes_bf16

    @property
    def int4_scale_bits(self) -> dict[int, int]:
        """How many INT4 modules store 8-bit scale codes, and how many fp16 grids."""
        bits = [entry["scale_bits"] for entry in self.modules.values() if entry["scheme"] == "int4"]
        return {b: bits.count(b) for b in sorted(set(bits))}


def quantize_model_dir(
    model_spec: str, options: QuantizeOptions, out: Path, *, progress: bool = False,
) -> QuantizeResult:
    """Quantize (or, with scheme "none", convert) `model_spec` into the saved format at `out`."""
    start = time.perf_counter()
    calib_text = _read_calibration(options) if options.needs_calibration else ""
    loaded = load_model(model_spec, device="cpu", dtype="float32", for_inference=False, progress=progress)
    model, config = loaded.model, loaded.config
    bytes_bf16 = _bf16_bytes(model, config.tie_word_embeddings)
    sequences = _calibration_sequences(loaded.tokenizer, options, calib_text) if options.needs_calibration else []
    choices = _calibrate_and_scale(model, options, sequences, progress)
    grams = _gptq_grams(model, sequences, progress) if options.uses_gptq else None
    modules = quantize_modules(model, options, grams=grams, progress=progress) if options.scheme != "none" else {}
    spec = QuantSpec(scheme=options.scheme, modules=modules, options=options.describe(),
                     report={"choices": choices}, source=model_spec)
    save_model(model, loaded.tokenizer, config_to_hf_dict(config), out, spec)
    return QuantizeResult(
        out=out, scheme=options.scheme, bytes_bf16=bytes_bf16, bytes_written=(out / WEIGHTS_FILE).stat().st_size,
        seconds=time.perf_counter() - start, num_quantized=len(modules), choices=choices,
        options=options.describe(), modules=modules,
    )


def _read_calibration(options: QuantizeOptions) -> str:
    from luodi.quant_tools.texts import calibration_text

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


def _calibration_sequences(tokenizer: Any, options: QuantizeOptions, text: str) -> list[list[int]]:
    from luodi.quant_tools.texts import token_windows

    return token_windows(tokenizer.encode(text), options.calib_seq_len, options.calib_max_seqs)


def _calibrate_and_scale(
    model: nn.Module, options: QuantizeOptions, sequences: list[list[int]], progress: bool,
) -> dict[str, dict[str, float]]:
    """Fold the scheme's activation scaling (SmoothQuant, AWQ) into the model, if any; the choices."""
    if not options.scales_activations:
        return {}
    from luodi.quant_tools.calibration import collect_activation_stats
    from luodi.quant_tools.smoothing import awq_scale_model, smooth_model

    stats = collect_activation_stats(model, sequences, progress=progress)
    if options.scheme == "w8a8":
        picked = smooth_model(model, stats, options.alpha)
        return {
            group: {"alpha": c.alpha, "mse": c.mse, "mse_at_half": c.mse_at_half} for group, c in picked.items()
        }
    betas = awq_scale_model(model, stats, options.group_size)
    return {group: {"beta": beta} for group, beta in betas.items()}


def _gptq_grams(model: nn.Module, sequences: list[list[int]], progress: bool) -> dict[str, torch.Tensor]:
    """Input Gram matrices of every decoder linear and the lm_head (which a tied table shares)."""
    from luodi.quant_tools.calibration import calibration_linears
    from luodi.quant_tools.gptq import collect_input_grams

    return collect_input_grams(model, [*calibration_linears(model), "lm_head"], sequences, progress=progress)


def quantize_modules(
    model: nn.Module, options: QuantizeOptions, *, grams: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Swap the decoder's linear layers, the embedding and the lm_head for quantized modules.

    Returns quant.json's `modules`: name -> {"scheme", options}. The embedding and lm_head of a
    W8A8 model are int8 weight-only (they have no preceding norm to smooth into, and a vocabulary
    projection is where activation quantization hurts most). With `grams` (GPTQ's input Gram
    matrices by module name) INT4 layers are rounded with error feedback; a tied table takes the
    lm_head's, since its error reaches the logits through the lm_head.
    """
    from luodi.quant.linear import QuantEmbedding

    layer_scheme = options.scheme
    table_scheme = "int8" if options.scheme == "w8a8" else options.scheme
    grams = grams or {}
    modules: dict[str, dict] = {}
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.layers.")]
    picking = progress and layer_scheme == "int4" and options.scale_bits == "auto"
    entries = _shared_scale_bits({name: _entry(layer_scheme, linear.weight, options)
                                  for name, linear in track_if(linears, "choosing int4 scale storage", picking)})
    for name, linear in track_if(linears, "quantizing layers", progress):
        set_module(model, name, _quantize_linear(linear, entries[name], grams.get(name)))
        modules[name] = entries[name]
    embedding = model.get_submodule(EMBEDDING)
    tied = model.config.tie_word_embeddings
    entry = _entry(table_scheme, embedding.weight, options)
    # GPTQ on a large table runs a while without countable parts (~40 s on gemma3's 262k rows).
    with status_if(f"quantizing the {embedding.weight.shape[0]}-token vocabulary table(s)", progress):
        table = _quantize_linear(_as_linear(embedding.weight), entry, grams.get("lm_head") if tied else None)
        set_module(model, EMBEDDING, QuantEmbedding(table))
        modules[EMBEDDING] = entry
        if tied:
            model.lm_head = table
        else:
            entry = _entry(table_scheme, model.lm_head.weight, options)
            model.lm_head = _quantize_linear(model.lm_head, entry, grams.get("lm_head"))
            modules["lm_head"] = entry
    return modules


def _quantize_linear(linear: nn.Linear, entry: dict[str, Any], gram: torch.Tensor | None) -> nn.Module:
    """`linear` in the scheme of `entry`; INT4 with GPTQ where its input Gram matrix is given."""
    from luodi.quant_tools.gptq import gptq_int4
    from luodi.quant.linear import Int4Linear
    from luodi.quant.weight_only import int4_grid_steps

    if entry["scheme"] == "int4" and gram is not None:
        group_size = entry["group_size"]
        steps = int4_grid_steps(linear.weight, group_size) if entry["scale_bits"] == 8 else None
        quantized = gptq_int4(linear.weight, gram, group_size, steps)
        return Int4Linear.from_quantized(linear, quantized, group_size, steps)
    return module_classes()[entry["scheme"]].from_float(linear, **_options_of(entry))


def _entry(scheme: str, weight: torch.Tensor, options: QuantizeOptions) -> dict[str, Any]:
    """A module's scheme and options; int4 falls back to the largest group size that divides K, and
    picks its scale storage for `weight` when asked to ("auto")."""
    if scheme != "int4":
        return {"scheme": scheme}
    fitting = [g for g in GROUP_SIZES if g <= options.group_size and weight.shape[1] % g == 0]
    if not fitting:
        return {"scheme": "int8"}  # K not a multiple of 32: per-channel int8 instead
    group_size = max(fitting)
    scale_bits = pick_scale_bits(weight, group_size) if options.scale_bits == "auto" else options.scale_bits
    return {"scheme": "int4", "group_size": group_size, "scale_bits": scale_bits}


FUSED_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # one matmul at load time


def _shared_scale_bits(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Projections that loading fuses into one layer (q/k/v, gate/up) must store alike: where one of
    them keeps fp16 grids, all of them do."""
    for name, entry in entries.items():
        parent, _, child = name.rpartition(".")
        partners = next((group for group in FUSED_PROJECTIONS if child in group), ())
        for partner in (entries.get(f"{parent}.{p}") for p in partners):
            if partner and partner.get("scale_bits") == 16 and entry.get("scale_bits") == 8:
                entry["scale_bits"] = 16
    return entries


def _options_of(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "scheme"}


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return linear

