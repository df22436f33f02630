"""`luodi corpus …`: clean a text corpus for training, and print the default recipe.

Thin commands: parse, call `luodi.corpus`, print. Bad input lines and unreadable files are
reported one line each on stderr while the run goes on; the run fails (exit 1) only when no
document could be read at all. A bad recipe or option is one line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

corpus_app = typer.Typer(help="Clean text corpora for training: filter, mask PII, deduplicate, report.",
                         no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@corpus_app.command("clean")
def clean_command(
    inputs: Annotated[list[Path], typer.Argument(help="JSONL, text, HTML or Parquet files, or folders of them.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for kept.jsonl, removed.jsonl, report.json/.md.")],
    languages: Annotated[str, typer.Option(help="Languages to keep, comma-separated ISO codes.")] = "zh,en",
    recipe: Annotated[Path | None, typer.Option(help="A recipe YAML (default: `luodi corpus recipe`).")] = None,
    executor: Annotated[str, typer.Option(
        help="local (processes over shards) or ray (Ray Data, needs luodi[ray]).")] = "local",
    workers: Annotated[int, typer.Option(help="Shards processed at a time (processes, or Ray tasks).")] = 1,
    ray_address: Annotated[str | None, typer.Option(
        help="With --executor ray: a running cluster's HOST:PORT (default: start a local Ray).")] = None,
) -> None:
    """Clean documents into DIR/kept.jsonl; what was removed and why goes to removed.jsonl and the report."""
    from luodi.corpus import clean

    allowed = tuple(code.strip() for code in languages.split(",") if code.strip())
    report = clean(inputs, out_dir, languages=allowed, recipe=recipe, executor=executor, workers=workers,
                   ray_address=ray_address, progress=sys.stderr.isatty())
    for error in report.input_errors:
        err.print(f"[yellow]skipped:[/yellow] {error}", highlight=False, soft_wrap=True)
    out.print(f"[green]✓[/green] {report.num_read} documents read, {report.num_kept} kept, "
              f"{report.num_removed} removed, {len(report.input_errors)} input errors → {out_dir}",
              highlight=False, soft_wrap=True)
    if report.input_errors and report.num_read == 0:
        raise typer.Exit(1)


@corpus_app.command("recipe")
def recipe_command() -> None:
    """Print the default recipe (YAML, every threshold named and commented)."""
    from luodi.corpus.recipe import default_recipe_text

    sys.stdout.write(default_recipe_text())
