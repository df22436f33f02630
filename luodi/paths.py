"""Where Luodi keeps its files: `$LUODI_HOME` (default `~/.cache/luodi`)."""

import os
from pathlib import Path


def luodi_home() -> Path:
    return Path(os.environ.get("LUODI_HOME") or Path.home() / ".cache" / "luodi").expanduser()


def models_dir() -> Path:
    return luodi_home() / "models"
