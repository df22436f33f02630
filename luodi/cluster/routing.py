"""Choosing a replica for a request: by predicted latency against a target, then by cached prefix.

For each healthy replica the gateway predicts, from the replica's reported step costs
(`luodi.server.load`) and the requests it has in flight there, the time per output token the
request would see (`base + per_row × batch`) and its time to first token (the uncached prompt
tokens at the replica's prefill cost, plus a wait for a batch slot when the replica is full).
Replicas that would miss the request's TPOT target are dropped; among the rest, those whose
in-flight count is within `imbalance` of the least loaded stay, and the one holding the longest
prefix of the prompt wins (ties: the lowest predicted latency). A conversation's session sticks
to its replica while that replica is among them. No replica can meet the target: `None`, and
the caller queues or refuses.

Round-robin ignores all of it (the baseline the benchmark compares against).

Must not know HTTP, processes or Ray: it sees `ReplicaView`s.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from luodi.cluster.prefixes import CHARS_PER_TOKEN, CHUNK_CHARS, PrefixMemory

Policy = Literal["latency", "round-robin"]
POLICIES: tuple[str, ...] = ("latency", "round-robin")
DEFAULT_IMBALANCE = 4  # requests in flight a replica may carry beyond the least loaded one
_UNKNOWN_TPOT_S = 0.0  # a replica that has not measured itself yet is assumed fast (it learns in steps)
_MAX_SESSIONS = 65536


@dataclass(slots=True)
class ReplicaView:
    """What the router knows of one replica: its report and the gateway's own bookkeeping."""

    id: str
    healthy: bool = False
    in_flight: int = 0  # requests the gateway has sent there and not seen finish
    max_num_seqs: int = 16
    base_s: float | None = None  # step cost (None: not measured yet)
    per_row_s: float = 0.0
    per_token_s: float = 0.0
    prefixes: PrefixMemory = field(default_factory=PrefixMemory)

    def tpot(self) -> float:
        """The time per output token a request joining now would see."""
        if self.base_s is None:
            return _UNKNOWN_TPOT_S
        batch = min(self.in_flight + 1, self.max_num_seqs)
        return self.base_s + self.per_row_s * batch

    def ttft(self, prompt_chars: int, cached_chars: int, max_tokens: int) -> float:
        """Prefill of the uncached prompt, plus a slot's wait when the batch is full."""
        uncached_tokens = max(prompt_chars - cached_chars, 0) / CHARS_PER_TOKEN
        ttft = uncached_tokens * self.per_token_s + (self.base_s or 0.0)
        queued = self.in_flight + 1 - self.max_num_seqs
        if queued > 0:  # each queued request ahead waits for about one running request to finish
            ttft += queued / self.max_num_seqs * max_tokens * self.tpot()
        return ttft


@dataclass(frozen=True, slots=True)
class RouteRequest:
    hashes: list[bytes]  # the prompt's chained chunk hashes (`prefixes.chain_hashes`)
    prompt_chars: int
    max_tokens: int = 256
    slo_tpot_s: float | None = None  # None: no target
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    replica: ReplicaView
    matched_chars: int
    predicted_ttft_s: float
    predicted_tpot_s: float


class Router:
    def __init__(self, policy: Policy = "latency", imbalance: int = DEFAULT_IMBALANCE) -> None:
        if policy not in POLICIES:
            raise ValueError(f"routing policy {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy = policy
        self.imbalance = imbalance
        self._turn = itertools.count()
        self._sessions: OrderedDict[str, str] = OrderedDict()  # session -> replica id

    def choose(self, replicas: list[ReplicaView], request: RouteRequest,
               exclude: frozenset[str] = frozenset()) -> Decision | None:
        """The replica for `request` (not one in `exclude`: those failed it already), or None when
        none is healthy or none can meet its TPOT target."""
        healthy = [r for r in replicas if r.healthy and r.id not in exclude]
        if not healthy:
            return None
        if self.policy == "round-robin":
            return self._decide(healthy[next(self._turn) % len(healthy)], request)
        feasible = [r for r in healthy if request.slo_tpot_s is None or r.tpot() <= request.slo_tpot_s]
        if not feasible:
            return None
        least = min(r.in_flight for r in feasible)
        balanced = [r for r in feasible if r.in_flight <= least + self.imbalance]
        sticky = self._sessions.get(request.session) if request.session else None
        chosen = next((r for r in balanced if r.id == sticky), None)
        if chosen is None:
            decisions = [self._decide(r, request) for r in balanced]
            chosen = max(decisions, key=lambda d: (d.matched_chars, -(d.predicted_ttft_s + d.predicted_tpot_s),
                                                   -d.replica.in_flight)).replica
        decision = self._decide(chosen, request)
        self._remember(decision, request)
        return decision

    def _decide(self, replica: ReplicaView, request: RouteRequest) -> Decision:
        matched = replica.prefixes.matched_chunks(request.hashes) * CHUNK_CHARS
        return Decision(replica, matched, replica.ttft(request.prompt_chars, matched, request.max_tokens),
                        replica.tpot())

    def _remember(self, decision: Decision, request: RouteRequest) -> None:
        decision.replica.prefixes.add(request.hashes)
        if request.session:
            self._sessions[request.session] = decision.replica.id
            self._sessions.move_to_end(request.session)
            if len(self._sessions) > _MAX_SESSIONS:
                self._sessions.popitem(last=False)
