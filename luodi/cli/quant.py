"""`luodi quantize`, `luodi convert` and `luodi eval`: make a smaller model, and measure what it lost."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from luodi.cli.options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, ModelOpt
from luodi.errors import InvalidParameterError
from luodi.paths import models_dir

out = Console()
err = Console(stderr=True)

OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default: $LUODI_HOME/models/NAME-SCHEME).")]


def _default_out(model: str, suffix: str) -> Path:
    stem = re.sub(r"\.gguf$", "", Path(model).name) or "model"
    return models_dir() / f"{stem}-{suffix}"


def _parse_alpha(alpha: str) -> float | str:
    if alpha == "auto":
        return alpha
    try:
        return float(alpha)
    except ValueError:
        raise InvalidParameterError(f"--alpha {alpha!r} must be 'auto' or a number in [0, 1]", "alpha") from None


def _parse_scale_bits(scale_bits: str) -> int | str:
    return int(scale_bits) if scale_bits.isdigit() else scale_bits  # QuantizeOptions checks the value


def quantize(
    model: ModelOpt = DEFAULT_MODEL,
    scheme: Annotated[str, typer.Option(help="int8 | int4 | w8a8")] = "int8",
    group_size: Annotated[int, typer.Option("--group-size", help="int4 group size: 32 | 64 | 128.")] = 32,
    alpha: Annotated[str, typer.Option(help="w8a8 smoothing: 'auto' (tuned per layer) or a fixed value.")] = "auto",
    awq: Annotated[bool, typer.Option("--awq", help="int4: activation-aware scaling from the calibration text.")] = False,
    method: Annotated[str, typer.Option(
        help="int4 rounding: 'gptq' (error feedback from the calibration text) or 'rtn' (round-to-nearest).")] = "gptq",
    scale_bits: Annotated[str, typer.Option(
        "--scale-bits", help="int4: each group's scale and min as 8-bit codes (8: 4.5 bits a weight), fp16 (16: "
        "5.0 bits), or per layer 8 unless the weights already sit on a 4-bit grid (auto).")] = "auto",
    calib: Annotated[Path | None, typer.Option(help="Calibration text file (default: the built-in text).")] = None,
    out_dir: OutOpt = None,
) -> None:
    """Quantize a model (int8 / int4 weight-only, or SmoothQuant W8A8) into Luodi's saved format."""
    from luodi.quant_tools.quantize import QuantizeOptions, quantize_model_dir

    options = QuantizeOptions(scheme=scheme, group_size=group_size, alpha=_parse_alpha(alpha), awq=awq,
                              method=method, scale_bits=_parse_scale_bits(scale_bits), calib_file=calib)
    suffix = f"{scheme}-g{group_size}" if scheme == "int4" else scheme
    result = quantize_model_dir(model, options, out_dir or _default_out(model, suffix), progress=True)
    _print_choices(result.choices)
    _print_summary(result)


def convert(model: ModelOpt = DEFAULT_MODEL, out_dir: OutOpt = None) -> None:
    """Write a model unquantized (bf16) in Luodi's saved format — an HF-compatible directory."""
    from luodi.quant_tools.quantize import QuantizeOptions, quantize_model_dir

    result = quantize_model_dir(model, QuantizeOptions(scheme="none"), out_dir or _default_out(model, "bf16"),
                                progress=True)
    _print_summary(result)


def _print_summary(result: Any) -> None:
    table = Table(box=None, show_header=False)
    table.add_row("scheme", _describe_scheme(result.options) if result.options else result.scheme)
    table.add_row("size (bf16)", f"{result.bytes_bf16 / 2**20:.1f} MiB")
    table.add_row("size (written)", f"{result.bytes_written / 2**20:.1f} MiB ({result.size_ratio:.2f}×)")
    table.add_row("layers quantized", str(result.num_quantized))
    if scale_bits := result.int4_scale_bits:
        table.add_row("int4 scales", ", ".join(f"{bits}-bit in {count}" for bits, count in scale_bits.items()))
    table.add_row("time", f"{result.seconds:.1f} s")
    out.print(table)
    out.print(f"[green]✓[/green] saved to {result.out}  (use it with --model {result.out})")


def _describe_scheme(options: dict[str, Any]) -> str:
    """"int4, group 32, 16-bit scales, gptq rounding, calibrated on built-in text" and the like."""
    parts = [options["scheme"]]
    if "group_size" in options:
        parts.append(f"group {options['group_size']}")
    if "scale_bits" in options:
        bits = options["scale_bits"]
        parts.append("8- or 16-bit scales by layer" if bits == "auto" else f"{bits}-bit scales")
    if "method" in options:
        parts.append(f"{options['method']} rounding" + (" after AWQ scaling" if options.get("awq") else ""))
    if "alpha" in options:
        parts.append(f"alpha {options['alpha']}")
    if "calibration" in options:
        parts.append(f"calibrated on {options['calibration']} text")
    return ", ".join(parts)


def _print_choices(choices: dict[str, dict[str, float]]) -> None:
    """Per-layer smoothing choices: one row per decoder layer, one column per smoothing group."""
    if not choices:
        return
    rows: dict[str, dict[str, str]] = {}
    for group, choice in choices.items():
        layer, _, kind = group.removeprefix("model.layers.").partition(".")
        value = choice.get("alpha", choice.get("beta"))
        rows.setdefault(layer, {})[kind] = f"{value:.2f}"
    kinds = sorted({k for row in rows.values() for k in row})
    label = "alpha" if "alpha" in next(iter(choices.values())) else "AWQ β"
    table = Table(title=f"{label} per layer", box=None)
    for col in ("layer", *kinds):
        table.add_column(col, justify="right")
    for layer in sorted(rows, key=lambda s: int(s) if s.isdigit() else -1):
        table.add_row(layer, *(rows[layer].get(k, "–") for k in kinds))
    out.print(table)


def evaluate(
    model: ModelOpt = DEFAULT_MODEL,
    text: Annotated[Path | None, typer.Option(help="UTF-8 text to score (default: the built-in held-out text).")] = None,
    ref: Annotated[str | None, typer.Option(help="Reference model: report greedy agreement with it and its perplexity.")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per scored window.")] = 512,
    max_windows: Annotated[int | None, typer.Option("--max-windows", help="Score at most this many windows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Perplexity per byte on held-out text, and greedy agreement with a reference model."""
    from luodi.quant_tools.evaluate import greedy_agreement, perplexity_per_byte
    from luodi.models.loader import load_model

    if seq_len < 2:
        raise InvalidParameterError(f"--seq-len {seq_len} must be at least 2", "seq_len")
    body = _read_eval_text(text)
    kwargs = dict(seq_len=seq_len, max_windows=max_windows, progress=not as_json)
    loaded = load_model(model, device=device, dtype=None if dtype == "auto" else dtype, progress=True)
    result: dict[str, Any] = {"model": model, "text": str(text) if text else "built-in held-out"}
    ppl = perplexity_per_byte(loaded.model, loaded.tokenizer, body, **kwargs)
    result.update(_ppl_fields(ppl))
    if ref is not None:
        reference = load_model(ref, device=device, dtype=None if dtype == "auto" else dtype, progress=True)
        ref_ppl = perplexity_per_byte(reference.model, reference.tokenizer, body, **kwargs)
        agreement = greedy_agreement(loaded.model, reference.model, loaded.tokenizer, body, **kwargs)
        result.update(
            ref=ref, ref_perplexity_per_byte=ref_ppl.perplexity_per_byte,
            delta_ppl_pct=100.0 * (ppl.perplexity_per_byte / ref_ppl.perplexity_per_byte - 1.0),
            greedy_agreement=agreement.agreement,
        )
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return
    table = Table(box=None, show_header=False)
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)


def _ppl_fields(ppl: Any) -> dict[str, Any]:
    return {"perplexity_per_byte": ppl.perplexity_per_byte, "bits_per_byte": ppl.bits_per_byte,
            "num_tokens": ppl.num_tokens, "num_bytes": ppl.num_bytes}


def _read_eval_text(path: Path | None) -> str:
    from luodi.quant_tools.texts import heldout_text

    if path is None:
        return heldout_text()
    try:
        body = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(f"--text {str(path)!r} is not a readable UTF-8 text file ({exc})", "text") from exc
    if not body.strip():
        raise InvalidParameterError(f"--text {str(path)!r} is empty", "text")
    return body
