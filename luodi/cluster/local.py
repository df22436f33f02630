"""Replicas as local processes: `luodi serve --replicas N` on one box (NUMA sockets, many cores).

Owns their lifecycle: each replica is a `luodi serve` child on a free loopback port with its own
thread count (`OMP_NUM_THREADS`, which torch and the native kernels follow), started together; a
child that exits unasked (killed, crashed) is started again on the same port after a short pause,
and rejoins the gateway's rotation once it answers `/health`. Stopping terminates them all.

Must not know routing or HTTP beyond the ports it hands out.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("luodi.cluster")
_RESTART_PAUSE_S = 1.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(slots=True)
class LocalReplica:
    id: str
    port: int
    process: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalReplicas:
    """N `luodi serve` children; `serve_args` are passed to each (model, dtype, keys file, ...)."""

    def __init__(self, count: int, serve_args: list[str], threads_per_replica: int | None = None,
                 log_dir: str | None = None, id_prefix: str = "r") -> None:
        self.replicas = [LocalReplica(f"{id_prefix}{i}", free_port()) for i in range(count)]
        self._serve_args = serve_args
        self._threads = threads_per_replica
        self._log_dir = log_dir
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def urls(self) -> dict[str, str]:
        return {r.id: r.url for r in self.replicas}

    def start(self) -> None:
        for replica in self.replicas:
            self._spawn(replica)
        self._watcher = threading.Thread(target=self._watch, name="luodi-replicas", daemon=True)
        self._watcher.start()

    def _spawn(self, replica: LocalReplica) -> None:
        env = dict(os.environ)
        if self._threads:
            env["OMP_NUM_THREADS"] = str(self._threads)
        command = [sys.executable, "-m", "luodi", "serve", *self._serve_args, "--host", "127.0.0.1",
                   "--port", str(replica.port), "--log-level", "warning"]
        output = subprocess.DEVNULL
        if self._log_dir:
            output = open(os.path.join(self._log_dir, f"replica-{replica.id}.log"), "ab")  # noqa: SIM115
        replica.process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        log.info("replica %s: pid %d on port %d", replica.id, replica.process.pid, replica.port)

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            for replica in self.replicas:
                if replica.process is not None and replica.process.poll() is not None and not self._stopping.is_set():
                    log.warning("replica %s (pid %d) exited with %s; starting it again", replica.id,
                                replica.process.pid, replica.process.returncode)
                    time.sleep(_RESTART_PAUSE_S)
                    replica.restarts += 1
                    self._spawn(replica)

    def stop(self) -> None:
        self._stopping.set()
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.terminate()
        for replica in self.replicas:
            if replica.process is not None:
                try:
                    replica.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    replica.process.kill()
