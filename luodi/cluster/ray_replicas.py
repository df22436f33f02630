"""Replicas as Ray actors: `luodi serve --ray ADDRESS`, each replica placed by its resources.

Each replica is an actor holding a `luodi serve` process on the node Ray placed it on, reserved
with `num_cpus` = its threads, `num_gpus` when asked, and a custom resource per hardware class
(`--ray-resource cpu-fast`: only nodes started with `--resources '{"cpu-fast": N}'` take it), so CPU
and GPU nodes take the models they suit. The actor restarts its process if it exits, and reports
its URL and node. Replicas listen on their node's address, so they demand a key: the gateway's own
keys file when it has one (its salted hashes only: no key travels), else a key made for this
gateway alone and sent with every request that carries none.

Plain actors rather than Ray Serve deployments: the gateway already does Serve's job (routing,
health, failover) by latency and prefix, and `ray[serve]` would add gRPC and its own HTTP proxy to
every node for nothing the gateway uses.

Ray starts with usage statistics off; the dashboard stays off on a local Ray; a cluster's own
settings (`RAY_AUTH_MODE=token`) are its own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luodi.cluster.local import free_port
from luodi.errors import LuodiError

log = logging.getLogger("luodi.cluster")


class RayReplicaError(LuodiError):
    """Ray is missing, the cluster cannot be joined, or no node has the resources a replica asks."""


@dataclass(frozen=True, slots=True)
class RaySpec:
    count: int
    serve_args: list[str]
    threads: int = 1
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)


class _ReplicaProcess:
    """The body of the actor (a plain class, so it can be tested and read without Ray)."""

    def __init__(self, serve_args: list[str], threads: int, keys_json: str) -> None:
        import ray

        self._host = ray.util.get_node_ip_address()
        self._port = free_port()
        self._node = ray.get_runtime_context().get_node_id()
        folder = Path(tempfile.mkdtemp(prefix="luodi-replica-"))
        self._keys = folder / "api-keys.json"
        self._keys.write_text(keys_json, encoding="utf-8")
        self._keys.chmod(0o600)
        self._command = [sys.executable, "-m", "luodi", "serve", *serve_args, "--host", self._host,
                         "--port", str(self._port), "--api-key-file", str(self._keys), "--log-level", "warning"]
        self._env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LUODI_NODE_ID": self._node}
        self._process = self._spawn()
        self._stopping = False
        threading.Thread(target=self._watch, daemon=True).start()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self._command, env=self._env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _watch(self) -> None:
        while not self._stopping:
            time.sleep(0.2)
            if self._process.poll() is not None and not self._stopping:
                time.sleep(1.0)
                self._process = self._spawn()

    def where(self) -> dict[str, Any]:
        return {"url": f"http://{self._host}:{self._port}", "node": self._node, "pid": self._process.pid}

    def stop(self) -> None:
        self._stopping = True
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()


class RayReplicas:
    """Replicas placed by Ray; `urls()` once started. `keys_file`: the gateway's keys (or None)."""

    def __init__(self, address: str | None, specs: list[RaySpec], keys_file: Path | None) -> None:
        self._address = address
        self._specs = specs
        self.replica_key: str | None = None  # the gateway's own key to its replicas, when it has no keys file
        self._keys_json = self._keys_for_replicas(keys_file)
        self._actors: list[Any] = []
        self.placed: dict[str, dict[str, Any]] = {}  # replica id -> {url, node, pid}

    def _keys_for_replicas(self, keys_file: Path | None) -> str:
        from luodi.server.auth import add_key

        if keys_file is not None:
            return keys_file.read_text(encoding="utf-8")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "keys.json"
            self.replica_key = add_key(path, "gateway")
            return path.read_text(encoding="utf-8")

    def start(self) -> None:
        ray = _ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self._address, logging_level=logging.ERROR, log_to_driver=False,
                         **({} if self._address else {"include_dashboard": False}))
            except (ConnectionError, RuntimeError) as exc:
                raise RayReplicaError(f"cannot join the Ray cluster at {self._address!r}: {str(exc).splitlines()[0]}; "
                                      "check its address and, with token auth, RAY_AUTH_MODE and RAY_AUTH_TOKEN") from None
        actor_class = ray.remote(_ReplicaProcess)
        handles = []
        for k, spec in enumerate(self._specs):
            options = {"num_cpus": spec.threads, "num_gpus": spec.num_gpus, "resources": dict(spec.resources),
                       "max_concurrency": 4}
            for i in range(spec.count):
                actor = actor_class.options(**options).remote(spec.serve_args, spec.threads, self._keys_json)
                self._actors.append(actor)
                handles.append((f"g{k}r{i}" if len(self._specs) > 1 else f"r{i}", actor))
        for rid, actor in handles:
            ready, _ = ray.wait([actor.where.remote()], timeout=300)
            if not ready:
                raise RayReplicaError(f"replica {rid} was not placed within 5 minutes: no node has the resources "
                                      "it asks (see `ray status`)")
            self.placed[rid] = ray.get(ready[0])

    def urls(self) -> dict[str, str]:
        return {rid: where["url"] for rid, where in self.placed.items()}

    def stop(self) -> None:
        ray = _ray()
        for actor in self._actors:
            try:
                ray.get(actor.stop.remote(), timeout=30)
            except Exception:  # noqa: BLE001 -- an actor already gone
                pass
            ray.kill(actor)


def _ray() -> Any:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves the machine
    try:
        import ray
    except ImportError:
        raise RayReplicaError("--ray needs Ray, which is not installed; install it with: pip install 'luodi[ray]'") \
            from None
    return ray


def parse_resources(text: str | None) -> dict[str, float]:
    """`--ray-resource NAME` or a JSON object {"NAME": amount}."""
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        value = json.loads(text)
        return {str(k): float(v) for k, v in value.items()}
    return {text: 1.0}
