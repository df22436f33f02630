"""Attention over a paged KV cache, in plain PyTorch.

The cache of one layer is a flat pool of token slots per KV head, `[Hkv, num_blocks * block_size,
D]` (head-major, so a gathered context is already contiguous per head for the matmuls); a
sequence owns whole blocks, listed in its block table. For one forward pass the engine computes,
once, where each new token's k/v goes (`slot_mapping`) and which slots each sequence attends to
(`kv_slots`, padded), plus the masks; every layer then only scatters, gathers and calls SDPA.
All layers write before they read, so requests in one batch may share freshly filled blocks.

On CPU `attend_rotary` does RoPE, the cache write and attention in one native call
(`luodi.kernels.fused`) for every token of a short chunk — a decode token, or the few new tokens
of a prompt whose prefix was cached — one query row at a time, reading keys in place. Long prompt
chunks keep SDPA, each on its own: padding a batch's decode rows to a long chunk's length would
multiply the attention work by the batch size.

This module knows tensors and slot indices only — not requests, blocks or the scheduler.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from luodi.kernels import fused


@dataclass(frozen=True, slots=True)
class SequenceSlice:
    """One sequence's share of a forward pass: `num_query` new tokens after `num_context` cached."""

    num_context: int
    num_query: int
    block_ids: tuple[int, ...]  # the sequence's block table: position p lives in block p // block_size


# Chunks of at most this many new tokens attend row by row in the native kernel; longer ones use
# SDPA, whose matmuls reuse each key across query rows. Measured on SmolLM2's and Gemma 3's
# shapes (2 cores; SDPA time / kernel time, store and RoPE included): 8 new tokens 1.5-2.1x at
# 0-848 cached; 32 new tokens 1.0-1.8x there, 0.7-1.0x after 2,000 cached; 64 new 0.8-1.8x.
ROW_ATTENTION_MAX_QUERY = 32


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Tokens attended one query row at a time: token r sits at `slot_mapping[r]` and attends to
    `kv_slots[r, :seq_lens[r]]` (its sequence's keys up to and including itself)."""

    token_index: torch.Tensor | None  # [R] rows of the step's [T] tokens; None: all of them, in order
    slot_mapping: torch.Tensor  # [R]
    kv_slots: torch.Tensor  # [R, K]
    seq_lens: torch.Tensor  # [R]


@dataclass(frozen=True, slots=True)
class LongChunk:
    """A prompt chunk attended with SDPA on its own: its rows of [T] and its sequence's metadata."""

    tokens: slice
    meta: AttentionMetadata


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    kv_slots: torch.Tensor  # [B, K] slots each sequence attends to (padded)
    query_index: torch.Tensor | None  # [T] position of each token in the padded [B * Q] layout
    num_seqs: int
    max_query_len: int
    is_causal: bool  # single sequence, no cached context: SDPA's own causal mask is exact
    query_positions: torch.Tensor  # [B, Q] absolute position of each padded query
    key_positions: torch.Tensor  # [K]
    seq_lens: torch.Tensor  # [B] keys each sequence attends to (cached + new): the first of its kv_slots
    seqs: tuple[SequenceSlice, ...]
    block_size: int
    pad_slot: int

    @functools.cached_property
    def mask(self) -> torch.Tensor | None:
        """[B, 1, Q, K] True = may attend; None = attend to all K (or SDPA's causal mask)."""
        if self.is_causal or (self.max_query_len == 1 and bool((self.seq_lens == self.kv_slots.shape[1]).all())):
            return None
        return self._causal_mask() & (self.key_positions[None, None, None, :] < self.seq_lens[:, None, None, None])

    def sliding_mask(self, window: int) -> torch.Tensor:
        """The mask restricted to keys within `window` positions of each query (Gemma 3)."""
        mask = self.mask if self.mask is not None else self._causal_mask()
        qpos = self.query_positions[:, None, :, None]  # [B, 1, Q, 1]
        return mask & (self.key_positions[None, None, None, :] > qpos - window)

    def _causal_mask(self) -> torch.Tensor:
        return self.key_positions[None, None, None, :] <= self.query_positions[:, None, :, None]

    @functools.cached_property
    def rows(self) -> RowBatch | None:
        """The tokens of short chunks, for the native row kernel (None: there are none)."""
        tokens: list[int] = []
        lengths: list[int] = []
        owners: list[int] = []  # each row's sequence in the batch
        offset = 0
        for b, s in enumerate(self.seqs):
            if s.num_query <= ROW_ATTENTION_MAX_QUERY:
                tokens.extend(range(offset, offset + s.num_query))
                lengths.extend(range(s.num_context + 1, s.num_context + s.num_query + 1))
                owners.extend([b] * s.num_query)
            offset += s.num_query
        if not tokens:
            return None
        if self.max_query_len == 1:  # a decode batch: the sequences' own tensors already are the rows
            return RowBatch(None, self.slot_mapping, self.kv_slots, self.seq_lens)
        device = self.slot_mapping.device
        index = None if len(tokens) == offset else torch.tensor(tokens, device=device)
        return RowBatch(
            token_index=index,
            slot_mapping=self.slot_mapping if index is None else self.slot_mapping[index],
            kv_slots=self.kv_slots[torch.tensor(owners, device=device)],
            seq_lens=torch.tensor(lengths, device=device),
        )

    @functools.cached_property
    def long_chunks(self) -> tuple[LongChunk, ...]:
        """The prompt chunks too long for the row kernel, each with metadata of its own."""
        chunks, offset = [], 0
        for s in self.seqs:
            if s.num_query > ROW_ATTENTION_MAX_QUERY:
                meta = build_metadata([s], self.block_size, self.slot_mapping.device, self.pad_slot)
                chunks.append(LongChunk(slice(offset, offset + s.num_query), meta))
            offset += s.num_query
        return tuple(chunks)


def _slots(seq: SequenceSlice, block_size: int) -> torch.Tensor:
    blocks = torch.tensor(seq.block_ids, dtype=torch.long)
    slots = (blocks[:, None] * block_size + torch.arange(block_size)).flatten()
    return slots[: seq.num_context + seq.num_query]


def build_metadata(
    seqs: list[SequenceSlice], block_size: int, device: torch.device, pad_slot: int = 0,
) -> AttentionMetadata:
    """Flatten a batch of sequence slices into the index tensors every layer shares.

    Padding in `kv_slots` points at `pad_slot`, which must hold finite values (masked scores
    weigh it by 0, and 0 * NaN would still be NaN).
    """
    num_seqs = len(seqs)
    max_q = max(s.num_query for s in seqs)
    max_k = max(s.num_context + s.num_query for s in seqs)
    slot_mapping: list[torch.Tensor] = []
    query_index: list[int] = []
    kv_slots = torch.full((num_seqs, max_k), pad_slot, dtype=torch.long)
    qpos = torch.zeros(num_seqs, max_q, dtype=torch.long)
    lengths = torch.zeros(num_seqs, dtype=torch.long)
    for b, s in enumerate(seqs):
        total = s.num_context + s.num_query
        slots = _slots(s, block_size)
        slot_mapping.append(slots[s.num_context :])
        query_index.extend(range(b * max_q, b * max_q + s.num_query))
        kv_slots[b, :total] = slots
        # Padded query rows copy the last real position: they attend to real keys (no NaN rows).
        qpos[b] = torch.arange(s.num_context, s.num_context + max_q).clamp(max=total - 1)
        lengths[b] = total
    is_flat = max_q == 1  # one token per sequence: [T] is already [B * 1]
    return AttentionMetadata(
        slot_mapping=torch.cat(slot_mapping).to(device),
        kv_slots=kv_slots.to(device),
        query_index=None if is_flat or num_seqs == 1 else torch.tensor(query_index, device=device),
        num_seqs=num_seqs,
        max_query_len=max_q,
        is_causal=num_seqs == 1 and seqs[0].num_context == 0 and max_q > 1,
        query_positions=qpos.to(device),
        key_positions=torch.arange(max_k, device=device),
        seq_lens=lengths.to(device),
        seqs=tuple(seqs),
        block_size=block_size,
        pad_slot=pad_slot,
    )


def _decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """One query per sequence: two small batched matmuls, in the cache's dtype.

    q: [B, H, 1, D]; k, v: [B, Hkv, K, D]; mask: [B, 1, 1, K] or None. For one query row SDPA's
    kernel and bf16 matmuls cost 2-3x more here than fp32 matmuls (measured, 2-core Zen 4), so
    the CPU cache is fp32 and the scores are softmaxed in fp32, as HF's eager attention does.
    """
    b, h, _, d = q.shape
    hkv = k.shape[1]
    q = q.to(k.dtype).view(b, hkv, h // hkv, d)  # query heads grouped by their KV head
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [B, Hkv, G, K]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).view(b, h, 1, d)


def _gather(cache: torch.Tensor, kv_slots: torch.Tensor) -> torch.Tensor:
    """[Hkv, S, D] cache, [B, K] slots -> [B, Hkv, K, D]."""
    if kv_slots.shape[0] == 1:
        return cache.index_select(1, kv_slots[0]).unsqueeze(0)
    return cache[:, kv_slots].transpose(0, 1)


class PagedAttention:
    """The `AttentionBackend` models call: one instance per forward pass."""

    def __init__(self, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor], meta: AttentionMetadata) -> None:
        self.k_caches = k_caches
        self.v_caches = v_caches
        self.meta = meta
        self._sliding_masks: dict[int, torch.Tensor] = {}

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """q [T, H, D], k and v [T, Hkv, D], already rotated: store k/v, attend -> [T, H, D]."""
        self._store(layer_idx, k, v)
        return self._read(layer_idx, q, scale, sliding_window)

    def _store(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> None:
        k_cache, v_cache = self.k_caches[layer_idx], self.v_caches[layer_idx]  # [Hkv, S, D]
        k_cache.index_copy_(1, self.meta.slot_mapping, k.transpose(0, 1).to(k_cache.dtype))
        v_cache.index_copy_(1, self.meta.slot_mapping, v.transpose(0, 1).to(v_cache.dtype))

    def _read(self, layer_idx: int, q: torch.Tensor, scale: float, sliding_window: int | None) -> torch.Tensor:
        meta = self.meta
        k_cache, v_cache = self.k_caches[layer_idx], self.v_caches[layer_idx]
        keys, values = _gather(k_cache, meta.kv_slots), _gather(v_cache, meta.kv_slots)  # [B, Hkv, K, D]
        queries = self._pad_queries(q)  # [B, H, Q, D]
        mask, is_causal = meta.mask, meta.is_causal
        if sliding_window is not None and keys.shape[2] > sliding_window:
            mask, is_causal = self._sliding(sliding_window), False
        if meta.max_query_len == 1:
            return self._unpad(_decode_attention(queries, keys, values, mask, scale).to(q.dtype))
        out = F.scaled_dot_product_attention(
            queries, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, is_causal=is_causal,
            scale=scale, enable_gqa=keys.shape[1] != queries.shape[1],
        )
        return self._unpad(out)

    def attend_rotary(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
        sin: torch.Tensor, *, scale: float, sliding_window: int | None = None,
        q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
        norm_eps: float = 1e-6, norm_is_offset: bool = False,
    ) -> torch.Tensor | None:
        """Head norms, RoPE, store and attend, natively for the tokens of short chunks; or None.

        q [T, H*D], k and v [T, Hkv*D] unrotated; cos, sin [T, 1, D]; returns [T, H*D]. Long
        prompt chunks beside short ones are normed, rotated and attended here with torch ops.
        None tells the caller to rotate and call `attend` itself (only long chunks, GPU, no
        native ops, autograd on).
        """
        meta = self.meta
        k_cache = self.k_caches[layer_idx]  # [Hkv, S, D]
        is_native = k_cache.dtype == torch.float32 and k_cache.shape[2] in fused.NATIVE_HEAD_DIMS
        if meta.rows is None or not is_native or not fused.enabled_for(q):
            return None
        norms = dict(q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight, norm_eps=norm_eps,
                     norm_is_offset=norm_is_offset)
        num_heads = q.shape[1] // k_cache.shape[2]
        if not meta.long_chunks:
            return self._attend_rows(layer_idx, q, k, v, cos, sin, num_heads, scale, sliding_window, norms)
        # Every write before any read (sequences in one step may share freshly filled blocks):
        # the long chunks store first, the row kernel stores then reads, the long chunks read last.
        chunks = [_ChunkStep(chunk, PagedAttention(self.k_caches, self.v_caches, chunk.meta))
                  for chunk in meta.long_chunks]
        for step in chunks:
            step.store(layer_idx, q, k, v, cos, sin, norms)
        out = q.new_empty(q.shape)
        index = meta.rows.token_index
        out[index] = self._attend_rows(layer_idx, q[index], k[index], v[index], cos[index], sin[index],
                                       num_heads, scale, sliding_window, norms)
        for step in chunks:
            out[step.chunk.tokens] = step.read(layer_idx, scale, sliding_window)
        return out

    def _attend_rows(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
        sin: torch.Tensor, num_heads: int, scale: float, sliding_window: int | None, norms: dict,
    ) -> torch.Tensor:
        rows = self.meta.rows
        return fused.rope_attend_decode(
            q, k, v, cos, sin, self.k_caches[layer_idx], self.v_caches[layer_idx], rows.slot_mapping,
            rows.kv_slots, rows.seq_lens, num_heads=num_heads, scale=scale, sliding_window=sliding_window,
            **norms,
        )

    def _sliding(self, window: int) -> torch.Tensor:
        if window not in self._sliding_masks:
            self._sliding_masks[window] = self.meta.sliding_mask(window)
        return self._sliding_masks[window]

    def _pad_queries(self, q: torch.Tensor) -> torch.Tensor:
        meta = self.meta
        if meta.query_index is None:
            if meta.num_seqs == 1:
                return q.transpose(0, 1).unsqueeze(0)  # [1, H, T, D]
            return q.unsqueeze(2)  # decode batch: [B, H, 1, D]
        padded = q.new_zeros(meta.num_seqs * meta.max_query_len, *q.shape[1:])
        padded[meta.query_index] = q
        return padded.view(meta.num_seqs, meta.max_query_len, *q.shape[1:]).transpose(1, 2)

    def _unpad(self, out: torch.Tensor) -> torch.Tensor:
        meta = self.meta
        if meta.query_index is None:
            if meta.num_seqs == 1:
                return out.squeeze(0).transpose(0, 1)  # [T, H, D]
            return out.squeeze(2)
        flat = out.transpose(1, 2).reshape(meta.num_seqs * meta.max_query_len, *out.shape[1:2], out.shape[3])
        return flat[meta.query_index]


@dataclass(slots=True)
class _ChunkStep:
    """A long chunk inside a mixed step: normed and rotated q held between its store and its read."""

    chunk: LongChunk
    backend: PagedAttention
    queries: torch.Tensor | None = None

    def store(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor, norms: dict) -> None:
        rows = self.chunk.tokens
        d = self.backend.k_caches[layer_idx].shape[2]
        n = rows.stop - rows.start
        self.queries = _rotate(q[rows].reshape(n, -1, d), cos[rows], sin[rows], norms["q_norm_weight"], norms)
        keys = _rotate(k[rows].reshape(n, -1, d), cos[rows], sin[rows], norms["k_norm_weight"], norms)
        self.backend._store(layer_idx, keys, v[rows].reshape(n, -1, d))

    def read(self, layer_idx: int, scale: float, sliding_window: int | None) -> torch.Tensor:
        out = self.backend._read(layer_idx, self.queries, scale, sliding_window)
        return out.reshape(out.shape[0], -1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor | None,
            norms: dict) -> torch.Tensor:
    """Head norm (when the model has one) then RoPE, as the models' unfused path computes them."""
    if norm_weight is not None:
        x = fused.rms_norm_reference(x, norm_weight, norms["norm_eps"], norms["norm_is_offset"])
    return fused.apply_rope(x, cos, sin)
