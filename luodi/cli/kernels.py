"""`luodi kernels`: which kernel path runs on this machine, and compiling the native builds ahead of use."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def kernels(
    build_all: Annotated[bool, typer.Option(
        "--build-all", help="First compile every native build this CPU can run (each instruction-set level, "
                            "as tests and forced levels use them), several at a time.")] = False,
    jobs: Annotated[int, typer.Option(help="Builds compiled at once (default: one per core).")] = 0,
) -> None:
    """Show the kernel path each group of CPU kernels takes here (native build or torch, and why)."""
    if build_all:
        _build_all(jobs or os.cpu_count() or 1)
    from luodi.kernels.report import cpu_kernel_paths

    table = Table(box=None)
    for column in ("kernels", "path"):
        table.add_column(column)
    for path in cpu_kernel_paths():
        table.add_row(path.kernels, path.summary())
    out.print(table)


def native_extensions() -> tuple:
    """Every native build Luodi has (each kernel group at each instruction-set level)."""
    from luodi.kernels import fused, lowbit
    from luodi.models import native_stack

    return (*lowbit.EXTENSIONS, *fused.EXTENSIONS, native_stack.EXTENSION)


def _build_all(jobs: int) -> None:
    from luodi.kernels.native_build import compile_all

    start = time.perf_counter()

    def done(extension, reason: str) -> None:  # noqa: ANN001
        mark = "[green]✓[/green]" if not reason else "[yellow]✗[/yellow]"
        err.print(f"{mark} {extension.what} ({extension.source}) after {time.perf_counter() - start:.0f} s"
                  + (f": {reason}" if reason else ""))

    results = compile_all(native_extensions(), jobs, done)
    failed = sum(1 for _, reason in results if reason)
    err.print(f"{len(results) - failed} of {len(results)} native builds ready in {time.perf_counter() - start:.0f} s"
              + (" (the others fall back to torch's ops)" if failed else ""))
