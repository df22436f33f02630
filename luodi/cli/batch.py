"""`luodi batch INPUT.jsonl --out OUT.jsonl [--ray ADDRESS]`: offline inference over a JSONL file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from luodi.cli.options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, ModelOpt
from luodi.errors import InvalidParameterError

err = Console(stderr=True)


def batch(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT.jsonl", help="One request a line: "
                                               '{"messages": [...]} or {"prompt": "..."}, optional "id", "max_tokens".')],
    out: Annotated[Path, typer.Option("--out", "-o", help="Answers, one line per request in input order.")],
    model: ModelOpt = DEFAULT_MODEL,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens per answer (a line's "
                                             "max_tokens overrides it).")] = 256,
    temperature: Annotated[float, typer.Option(help="0: greedy (the same answers local or on Ray).")] = 0.0,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Requests run together and saved together "
                                            "(a killed run resumes after its last saved shard).")] = 64,
    ray: Annotated[str | None, typer.Option("--ray", help="Run on Ray Data: a cluster's HOST:PORT, or 'local'.")] = None,
    workers: Annotated[int, typer.Option(help="With --ray: model replicas (actors) at once.")] = 1,
    threads: Annotated[int, typer.Option(help="With --ray: CPUs each replica reserves.")] = 1,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Answer every request of a JSONL file with the same engine as `serve`, resumable, optionally on Ray."""
    from luodi.cluster.batch import BatchOptions, run_batch

    if shard_size < 1 or workers < 1 or threads < 1 or max_tokens < 1:
        raise InvalidParameterError("--shard-size, --workers, --threads and --max-tokens must be at least 1")
    options = BatchOptions(model, max_tokens, temperature, shard_size, None if dtype == "auto" else dtype, device)
    counts = run_batch(input_path, out, options, ray_address=ray, workers=workers, threads=threads)
    resumed = f" ({counts['resumed_shards']} of {counts['shards']} shards from an earlier run)" \
        if counts["resumed_shards"] else ""
    err.print(f"[green]✓[/green] {counts['requests']} answers written to {out}{resumed}")
