"""`UploadSpool`: where an uploaded document waits on disk while it is ingested, and the clean-up
of what a crashed server left there.

Layout: `ROOT/<pid>-<random>/` per server process, holding `.lock` (kept locked with `flock` for
the life of the process) and one `<random>/<filename>` folder per upload in flight, removed when
its ingestion ends. A process killed with -9 cannot remove its folder, but the kernel drops its
lock: at start-up every process folder whose lock can be taken is a dead process's and is
deleted. Locks, not pids, decide, so a reused pid or a second server on the same root is safe.

Must not know HTTP or ingestion: it stores bytes under a name and gives back a path.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from luodi.errors import KnowledgeBaseError
from luodi.paths import PRIVATE_DIR_MODE, create_private_file, private_dir

log = logging.getLogger("luodi.server")
LOCK_FILE = ".lock"


class UploadSpool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._own: Path | None = None
        self._lock_file: IO[bytes] | None = None
        self._guard = threading.Lock()

    def remove_stale(self) -> list[Path]:
        """Delete the folders of server processes that are gone; returns what was removed."""
        removed = []
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if folder.is_dir() and folder != self._own and _is_stale(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        if removed:
            log.info("removed %d upload folder(s) left by stopped servers in %s", len(removed), self.root)
        return removed

    @contextmanager
    def holding(self, filename: str, content: bytes) -> Iterator[Path]:
        """`content` written to a fresh file called `filename`, removed when the block ends."""
        folder = self._process_folder() / secrets.token_hex(8)
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
            path = create_private_file(folder / filename)
            path.write_bytes(content)
        except OSError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise KnowledgeBaseError(f"cannot store the upload {filename!r} in {self.root}: {err}; check "
                                     "that the folder is writable and the disk not full") from err
        try:
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        with self._guard:
            if self._own is not None:
                shutil.rmtree(self._own, ignore_errors=True)
            if self._lock_file is not None:
                self._lock_file.close()
            self._own = self._lock_file = None

    def _process_folder(self) -> Path:
        """This process's folder, made and locked on first use."""
        with self._guard:
            if self._own is None:
                # Made under a hidden name and renamed once locked: a server starting meanwhile
                # never sees this folder without its lock.
                name = f"{os.getpid()}-{secrets.token_hex(4)}"
                making = private_dir(self.root) / f".{name}"
                making.mkdir(mode=PRIVATE_DIR_MODE)
                lock_file = (making / LOCK_FILE).open("wb")
                _lock(lock_file, blocking=True)
                self._own, self._lock_file = making.rename(self.root / name), lock_file
            return self._own


def _is_stale(folder: Path) -> bool:
    """Whether `folder` belongs to a process that is gone: its lock file exists and is free."""
    try:
        with (folder / LOCK_FILE).open("rb") as lock_file:
            return _lock(lock_file, blocking=False)  # released again when the file closes
    except OSError:
        return False  # no lock file (yet): not ours to judge


def _lock(lock_file: IO[bytes], blocking: bool) -> bool:
    """Take an exclusive flock; False if another open file holds it (non-blocking)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locks, so nothing is ever taken for stale
        return blocking
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True
