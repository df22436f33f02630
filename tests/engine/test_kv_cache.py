"""Block pool and KV cache manager: exact block ids taken, freed, cached and reused."""

from __future__ import annotations

from luodi.engine.kv_cache import BlockPool, KVCacheManager
from luodi.engine.request import Request
from luodi.engine.sampling import SamplingParams


def _request(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(temperature=0))


def test_pool_allocates_in_order_and_reuses_least_recently_freed():
    pool = BlockPool(4)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.allocate(2) is None  # only block 3 left: all or nothing
    pool.release([2, 0])
    assert pool.num_free == 3
    assert pool.allocate(3) == [3, 2, 0]


def test_request_blocks_follow_token_count_and_free_tail_first():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    req = _request("a", list(range(10)))
    assert kv.allocate(req, 10) == [0, 1, 2]
    req.num_computed_tokens = 10
    assert kv.allocate(req, 2) == [0, 1, 2]  # 12 tokens still fit in three blocks
    assert kv.allocate(req, 3) == [0, 1, 2, 3]
    kv.free(req)
    assert list(kv.pool.free_queue) == [4, 5, 6, 7, 3, 2, 1, 0]


def test_prefix_cache_hits_full_blocks_and_leaves_one_token_to_compute():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = _request("a", list(range(10)))
    assert kv.cached_prefix(first) == 0
    assert kv.allocate(first, 10) == [0, 1, 2]
    kv.free(first)
    # Same first 8 tokens, then different: two full blocks are shared.
    second = _request("b", list(range(8)) + [99, 98])
    assert kv.cached_prefix(second) == 8
    assert kv.block_ids("b") == [1, 0] or kv.block_ids("b") == [0, 1]
    assert kv.block_ids("b") == [0, 1]
    # Exactly 8 tokens, all cached: the last block is recomputed so the request gets logits.
    third = _request("c", list(range(8)))
    assert kv.cached_prefix(third) == 4
    assert kv.block_ids("c") == [0]


def test_evicted_block_loses_its_cache_entry():
    kv = KVCacheManager(num_blocks=2, block_size=2)
    a = _request("a", [1, 2, 3])
    kv.cached_prefix(a)
    assert kv.allocate(a, 3) == [0, 1]
    kv.free(a)  # free queue now [1, 0]: block 1 (the tail) goes first
    b = _request("b", [7, 7, 7])
    assert kv.cached_prefix(b) == 0
    assert kv.allocate(b, 3) == [1, 0]  # both reused: block 0's cached [1, 2] is evicted
    kv.free(b)
    c = _request("c", [1, 2, 5])
    assert kv.cached_prefix(c) == 0


def _cached_after(kv: KVCacheManager, first: Request, second: Request) -> int:
    """Tokens `second` finds cached after `first` ran and was freed."""
    kv.cached_prefix(first)
    kv.allocate(first, len(first.prompt_ids))
    kv.free(first)
    return kv.cached_prefix(second)


def test_cache_salt_partitions_the_prefix_cache():
    tokens = list(range(9))

    def salted(rid: str, salt: str | None, adapter: str | None = None) -> Request:
        return Request(rid, tokens, SamplingParams(temperature=0), adapter=adapter, cache_salt=salt)

    # The same tenant (salt) hits its own blocks; another tenant, or no salt, finds nothing.
    assert _cached_after(KVCacheManager(8, 4), salted("a", "tenant-a"), salted("b", "tenant-a")) == 8
    assert _cached_after(KVCacheManager(8, 4), salted("a", "tenant-a"), salted("b", "tenant-b")) == 0
    assert _cached_after(KVCacheManager(8, 4), salted("a", "tenant-a"), salted("b", None)) == 0
    assert _cached_after(KVCacheManager(8, 4), salted("a", None), salted("b", None)) == 8
    # Within one tenant, adapters stay apart as before.
    kv = KVCacheManager(8, 4)
    assert _cached_after(kv, salted("a", "t", adapter="x"), salted("b", "t", adapter="y")) == 0
    kv = KVCacheManager(8, 4)
    assert _cached_after(kv, salted("a", "t", adapter="x"), salted("b", "t", adapter="x")) == 8
