"""Option types shared by the CLI commands."""

from typing import Annotated

import typer

from luodi.loading.catalog import DEFAULT_MODEL

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Catalog name, .gguf file, or model directory.")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 (auto: bf16 on CPU, fp16 on CUDA).")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy; 0–2.")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass, (0, 1].")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).")]
RepetitionPenaltyOpt = Annotated[float, typer.Option("--repetition-penalty", help="> 1 discourages repeats (1 = off).")]
SpeculativeOpt = Annotated[str, typer.Option(
    "--speculative", help="ngram: draft tokens from the prompt and output (prompt lookup) and verify them in one "
    "forward pass, while few requests run: the same text, faster where it copies its input. none: off.")]

__all__ = ["DEFAULT_MODEL", "DeviceOpt", "DtypeOpt", "MaxTokensOpt", "ModelOpt", "SeedOpt", "RepetitionPenaltyOpt",
           "SpeculativeOpt", "TemperatureOpt", "TopKOpt", "TopPOpt"]
