"""Paged KV cache bookkeeping: the block pool, per-request block tables, and prefix caching.

Deals in block ids only — never tensors (the runner owns the cache memory). A full block is
identified by the hash of its tokens chained to the hash of the block before it, so two requests
that share a token prefix share its blocks. Blocks whose reference count falls to zero stay
cached and are reused least-recently-freed first; a reused block loses its cache entry. A
request's LoRA adapter seeds its chain: the same tokens under another adapter have other keys
and values, so they never share blocks. So does its cache salt (vLLM's `cache_salt`): an opaque
value the caller gives — the server gives each tenant its own — so a request can only hit blocks
that requests with the same salt computed, and the number of cached tokens (or the time to first
token) tells a tenant nothing about another's prompts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from luodi.engine.request import Request


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None


@dataclass(slots=True)
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens found cached

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class BlockPool:
    """All blocks; a free queue in eviction order; the hash → block map of cached full blocks."""

    def __init__(self, num_blocks: int) -> None:
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id

    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    def allocate(self, count: int) -> list[int] | None:
        if count > len(self.free_queue):
            return None
        ids = []
        for _ in range(count):
            block_id, _ = self.free_queue.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:  # evict its cached content
                del self.cached[block.block_hash]
                block.block_hash = None
            block.ref_count = 1
            ids.append(block_id)
        return ids

    def touch(self, block_ids: list[int]) -> None:
        """Take a reference on cached blocks (a prefix-cache hit)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_queue[block_id]
            block.ref_count += 1

    def release(self, block_ids: list[int]) -> None:
        """Drop a reference on each block; blocks no one uses become free, still cached."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} released twice"
            if block.ref_count == 0:
                self.free_queue[block_id] = None

    def lookup(self, block_hash: int) -> int | None:
        return self.cached.get(block_hash)

    def register(self, block_id: int, block_hash: int) -> None:
        if block_hash in self.cached:
            return  # the same content is already cached in another block
        self.blocks[block_id].block_hash = block_hash
        self.cached[block_hash] = block_id


@dataclass(slots=True)
class _RequestBlocks:
    block_ids: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # of this request's full blocks, in order


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.enable_prefix_caching = enable_prefix_caching
        self.stats = PrefixCacheStats()
        self._tables: dict[str, _RequestBlocks] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def num_blocks(self) -> int:
        return len(self.pool.blocks)

    def block_ids(self, request_id: str) -> list[int]:
        return self._tables[request_id].block_ids

    def cached_prefix(self, request: Request) -> int:
        """Find cached blocks for a new request's prompt, take them, return the tokens they cover.

        At least one prompt token is always left to compute, so the request gets logits to sample.
        """
        table = self._tables.setdefault(request.request_id, _RequestBlocks())
        assert not table.block_ids, "cached_prefix is for requests that hold no blocks"
        if not self.enable_prefix_caching:
            return 0
        tokens = request.all_token_ids
        max_blocks = (len(tokens) - 1) // self.block_size
        hits: list[int] = []
        for block_hash in self._hashes(request, max_blocks, table):
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        self.pool.touch(hits)
        table.block_ids.extend(hits)
        return len(hits) * self.block_size

    def record_prefix_lookup(self, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        self.stats.queries += num_prompt_tokens
        self.stats.hits += num_cached_tokens

    def allocate(self, request: Request, num_new_tokens: int) -> list[int] | None:
        """Make room for `num_new_tokens` after the computed ones; None (nothing taken) if full."""
        table = self._tables.setdefault(request.request_id, _RequestBlocks())
        num_tokens = request.num_computed_tokens + num_new_tokens
        needed = -(-num_tokens // self.block_size) - len(table.block_ids)
        if needed > 0:
            new_ids = self.pool.allocate(needed)
            if new_ids is None:
                return None
            table.block_ids.extend(new_ids)
        if self.enable_prefix_caching:
            self._register_full_blocks(request, table, num_tokens)
        return table.block_ids

    def free(self, request: Request) -> None:
        table = self._tables.pop(request.request_id, None)
        if table is not None:
            # Tail blocks first into the free queue: they are evicted before the shared prefix.
            self.pool.release(table.block_ids[::-1])

    def _register_full_blocks(self, request: Request, table: _RequestBlocks, num_tokens: int) -> None:
        num_full = min(num_tokens, len(request.all_token_ids)) // self.block_size
        for i, block_hash in enumerate(self._hashes(request, num_full, table)):
            self.pool.register(table.block_ids[i], block_hash)

    def _hashes(self, request: Request, num_blocks: int, table: _RequestBlocks) -> list[int]:
        """Chained hashes of the first `num_blocks` full blocks, extending the request's memo."""
        bs = self.block_size
        tokens = request.all_token_ids
        seed = _chain_seed(request)
        while len(table.hashes) < num_blocks:
            i = len(table.hashes)
            parent = table.hashes[-1] if table.hashes else seed
            table.hashes.append(hash((parent, tuple(tokens[i * bs : (i + 1) * bs]))))
        return table.hashes[:num_blocks]


def _chain_seed(request: Request) -> int:
    """The hash the first block chains from: what besides the tokens decides the cached values
    (the adapter), and who may share them (the salt)."""
    if request.cache_salt is not None:
        return hash(("salt", request.cache_salt, request.adapter))
    return 0 if request.adapter is None else hash(("adapter", request.adapter))
