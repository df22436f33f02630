"""The replicas behind a gateway: where each one is, whether it is up, and what it reports.

Owns polling. Every `poll_s` each replica's `/health` is read (its status and the load figures
of `luodi.server.load`); a replica that does not answer, or answers other than "ok", is out of
rotation until it answers "ok" again (a restarted process rejoins by itself), and its remembered
prefixes are dropped when its start time changes (a new process has an empty cache). A failure
seen on a request marks the replica down at once, without waiting for the next poll.

Must not know routing policy or the OpenAI API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from luodi.cluster.routing import ReplicaView

log = logging.getLogger("luodi.cluster")
POLL_S = 0.25
_HEALTH_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Replica:
    view: ReplicaView
    url: str  # http://host:port, no trailing slash
    report: dict[str, Any] = field(default_factory=dict)  # the last `load` figures it sent
    status: str = "unknown"  # "ok", "loading", "failed", "down"
    detail: str | None = None
    served: int = 0  # requests the gateway completed there
    failures: int = 0  # requests it failed (the gateway retried them elsewhere)
    last_seen: float = 0.0

    @property
    def id(self) -> str:
        return self.view.id

    def take(self, health: dict[str, Any]) -> None:
        """Fold one `/health` answer in."""
        self.status, self.detail = health.get("status", "down"), health.get("detail")
        load = health.get("load") or {}
        if load.get("started_at") != self.report.get("started_at"):
            self.view.prefixes.clear()  # a new process: its prefix cache is empty
        self.report = load
        view = self.view
        view.healthy = self.status == "ok"
        view.max_num_seqs = int(load.get("max_num_seqs", view.max_num_seqs))
        cost = load.get("step_cost")
        if cost:
            view.base_s, view.per_row_s, view.per_token_s = cost["base_s"], cost["per_row_s"], cost["per_token_s"]
        if load.get("kv_blocks_total"):
            view.prefixes.resize_for(int(load["kv_blocks_total"]) * int(load.get("block_size", 16)))
        self.last_seen = time.time()

    def mark_down(self, reason: str) -> None:
        if self.view.healthy:
            log.warning("replica %s (%s) is down: %s", self.id, self.url, reason)
        self.view.healthy = False
        self.status, self.detail = "down", reason


class ReplicaPool:
    def __init__(self, urls: dict[str, str], client: httpx.AsyncClient, poll_s: float = POLL_S) -> None:
        self.replicas = {rid: Replica(ReplicaView(rid), url.rstrip("/")) for rid, url in urls.items()}
        self._client = client
        self._poll_s = poll_s
        self._task: asyncio.Task | None = None

    def views(self) -> list[ReplicaView]:
        return [r.view for r in self.replicas.values()]

    def by_view(self, view: ReplicaView) -> Replica:
        return self.replicas[view.id]

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.view.healthy]

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(r) for r in self.replicas.values()))

    async def _poll(self, replica: Replica) -> None:
        try:
            response = await self._client.get(f"{replica.url}/health", timeout=_HEALTH_TIMEOUT_S)
            health = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            replica.mark_down(f"/health did not answer ({type(exc).__name__})")
            return
        was_up = replica.view.healthy
        replica.take(health if isinstance(health, dict) else {})
        if replica.view.healthy and not was_up:
            log.info("replica %s (%s) is up", replica.id, replica.url)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._poll_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
