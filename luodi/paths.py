"""Where Luodi keeps its files: `$LUODI_HOME` (default `~/.cache/luodi`), and how it makes the
ones that hold private data (knowledge bases, API keys) readable by their owner only.

Private files are created 0600 and private directories 0700 by the helpers below, at creation,
not by a process-wide umask: the server's other threads create files too, and a umask change
would reach them.
"""

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def luodi_home() -> Path:
    return Path(os.environ.get("LUODI_HOME") or Path.home() / ".cache" / "luodi").expanduser()


def models_dir() -> Path:
    return luodi_home() / "models"


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter: each missing component is made 0700, and
    `path` itself is tightened to 0700 if it was wider (a folder an older Luodi made 0755)."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile by another process
    return make_private(path)


def make_private(path: Path) -> Path:
    """Tighten an existing file to 0600 (a directory to 0700) if its mode is anything else."""
    path = Path(path)
    wanted = PRIVATE_DIR_MODE if path.is_dir() else PRIVATE_FILE_MODE
    if path.stat().st_mode & 0o777 != wanted:
        os.chmod(path, wanted)
    return path


def create_private_file(path: Path) -> Path:
    """A new, empty file at `path`, mode 0600 from the start; `FileExistsError` if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    os.close(fd)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or a run started again after a kill) sees the old
    file or the whole new one, never half: a temporary file beside it, synced, then renamed."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
