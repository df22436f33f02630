"""Registers the assistant apps' commands on the `luodi` app (one line in main.py)."""

from __future__ import annotations

import typer

from luodi.cli.persona import persona
from luodi.cli.scene import scene
from luodi.cli.schedule import schedule
from luodi.cli.support import support


def register_assist_commands(app: typer.Typer) -> None:
    app.command()(persona)
    app.command()(scene)
    app.command()(schedule)
    app.command()(support)
