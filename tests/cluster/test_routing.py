"""The router's choices on hand-set replica figures, the prefix hash chains, and the step-cost fit.

Oracles: hand-computed predictions (`base + per_row × batch`), hashes of hand-written prompts, and
a least-squares fit of steps generated from known costs.
"""

from __future__ import annotations

import pytest

from luodi.cluster.prefixes import CHUNK_CHARS, PrefixMemory, chain_hashes, prompt_text
from luodi.cluster.routing import ReplicaView, RouteRequest, Router
from luodi.server.load import fit_step_cost

SYSTEM_A = "You are the support assistant of Acme Rail. " * 8
SYSTEM_B = "You are a travel planner who writes short itineraries. " * 8


def _chat(system: str, user: str) -> RouteRequest:
    text = prompt_text({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
    return RouteRequest(chain_hashes(text), len(text), max_tokens=64)


def _replica(rid: str, *, base: float | None = 0.02, per_row: float = 0.002, in_flight: int = 0) -> ReplicaView:
    return ReplicaView(rid, healthy=True, in_flight=in_flight, base_s=base, per_row_s=per_row, per_token_s=1e-3)


def test_hash_chains_match_exactly_the_shared_leading_chunks():
    a = "x" * (3 * CHUNK_CHARS) + "tail one"
    b = "x" * (3 * CHUNK_CHARS) + "y" * CHUNK_CHARS
    ha, hb = chain_hashes(a), chain_hashes(b)
    assert len(ha) == 3 and len(hb) == 4 and ha == hb[:3]
    assert chain_hashes("y" + a)[0] != ha[0]
    assert len(chain_hashes("\ud800" * CHUNK_CHARS)) == 1  # a lone surrogate (valid JSON) is hashed, not a 500
    memory = PrefixMemory(capacity_chunks=5)
    memory.add(hb)
    assert memory.matched_chunks(ha) == 3 and memory.matched_chunks(chain_hashes("z" * 200)) == 0
    memory.add(chain_hashes("z" * 200))  # 3 more chunks: the oldest two of hb are evicted
    assert len(memory) == 5 and memory.matched_chunks(hb) == 0


def test_prompt_text_is_canonical_over_roles_and_contents():
    one = prompt_text({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]})
    assert one == "system\x1fS\x1euser\x1fhi\x1e"
    assert prompt_text({"prompt": "plain"}) == "plain"


def test_prefix_wins_among_balanced_replicas_and_sessions_stick():
    router = Router("latency", imbalance=2)
    r0, r1 = _replica("r0"), _replica("r1")
    first = router.choose([r0, r1], _chat(SYSTEM_A, "where is my ticket?"))
    other = "r1" if first.replica.id == "r0" else "r0"
    # Same system prompt, another user: the replica holding it, though it now has more in flight.
    first.replica.in_flight += 1
    again = router.choose([r0, r1], _chat(SYSTEM_A, "refund please"))
    assert again.replica is first.replica and again.matched_chars >= len(SYSTEM_A) - CHUNK_CHARS
    # Beyond the imbalance bound the least loaded replica takes it, prefix or not.
    first.replica.in_flight = 3
    spill = router.choose([r0, r1], _chat(SYSTEM_A, "lost luggage"))
    assert spill.replica.id == other and spill.matched_chars == 0
    # A session sticks to its replica while that replica is within the bound.
    first.replica.in_flight, spill.replica.in_flight = 0, 0
    s1 = router.choose([r0, r1], RouteRequest([], 10, session="u-7"))
    for _ in range(3):
        assert router.choose([r0, r1], RouteRequest([], 10, session="u-7")).replica is s1.replica


def test_latency_target_drops_slow_replicas_and_none_fits_is_none():
    router = Router("latency")
    fast, slow = _replica("fast", base=0.010, per_row=0.001), _replica("slow", base=0.060, per_row=0.004)
    # Predicted TPOT at batch 1: fast 10 + 1 = 11 ms, slow 60 + 4 = 64 ms.
    assert fast.tpot() == pytest.approx(0.011) and slow.tpot() == pytest.approx(0.064)
    target = RouteRequest(chain_hashes(SYSTEM_B), len(SYSTEM_B), slo_tpot_s=0.050)
    slow.prefixes.add(target.hashes)  # the slow one even holds the prefix: the target comes first
    assert router.choose([slow, fast], target).replica is fast
    fast.in_flight = 40  # batch capped at max_num_seqs 16: 10 + 16 = 26 ms, still within 50
    assert router.choose([slow, fast], target).replica is fast
    tight = RouteRequest([], 100, slo_tpot_s=0.005)
    assert router.choose([slow, fast], tight) is None
    assert router.choose([slow, fast], target, exclude=frozenset({"fast"})) is None


def test_ttft_counts_the_uncached_prompt_and_a_full_batch():
    r = _replica("r", base=0.02, per_row=0.0)
    r.per_token_s = 0.001
    assert r.ttft(prompt_chars=3500, cached_chars=0, max_tokens=64) == pytest.approx(1.0 + 0.02)  # 1000 tokens
    assert r.ttft(prompt_chars=3500, cached_chars=3500, max_tokens=64) == pytest.approx(0.02)
    r.in_flight = 17  # one queued beyond 16 running: waits 1/16 of 64 tokens at 20 ms
    assert r.ttft(0, 0, 64) == pytest.approx(0.02 + 64 * 0.02 / 16 * 2)


def test_round_robin_and_unhealthy_replicas():
    router = Router("round-robin")
    views = [_replica("r0"), _replica("r1"), _replica("r2")]
    views[1].healthy = False
    picked = [router.choose(views, RouteRequest([], 1)).replica.id for _ in range(4)]
    assert picked == ["r0", "r2", "r0", "r2"]
    assert Router("latency").choose([ReplicaView("down")], RouteRequest([], 1)) is None
    with pytest.raises(ValueError, match="round-robin"):
        Router("random")  # type: ignore[arg-type]


def test_step_cost_fit_recovers_known_costs():
    base, per_row, per_token = 0.012, 0.0015, 0.0004
    steps = [(p, d, base + per_row * d + per_token * p) for p in (0, 0, 16, 64) for d in (1, 2, 4, 8, 16)]
    cost = fit_step_cost(steps)
    assert cost.base_s == pytest.approx(base) and cost.per_row_s == pytest.approx(per_row)
    assert cost.per_token_s == pytest.approx(per_token) and cost.tpot(4) == pytest.approx(base + 4 * per_row)
    assert fit_step_cost(steps[:3]) is None


def test_gateway_refuses_or_queues_when_no_replica_meets_the_target():
    import asyncio

    import httpx

    from luodi.cluster.gateway import Gateway, GatewayConfig
    from luodi.server.errors import QueueFullError

    def gateway(when: str) -> Gateway:
        g = Gateway(GatewayConfig({"r0": "http://127.0.0.1:9"}, when_no_replica_fits=when, queue_timeout_s=0.3),
                    httpx.AsyncClient())
        view = g.pool.replicas["r0"].view
        view.healthy, view.base_s, view.per_row_s = True, 0.080, 0.0  # 80 ms per token
        return g

    tight = RouteRequest([], 10, slo_tpot_s=0.050)
    with pytest.raises(QueueFullError, match="within its target of 50 ms"):
        asyncio.run(gateway("reject").pick(tight, frozenset()))
    queued = gateway("queue")

    async def speed_up_then_pick():
        async def later():
            await asyncio.sleep(0.1)
            queued.pool.replicas["r0"].view.base_s = 0.030  # a poll says it is faster now
        asyncio.ensure_future(later())
        return await queued.pick(tight, frozenset())

    replica = asyncio.run(speed_up_then_pick())
    assert replica.id == "r0" and replica.view.in_flight == 1  # waited in the queue, then routed
    assert asyncio.run(queued.pick(tight, frozenset({"r0"}))) is None  # every replica tried already
