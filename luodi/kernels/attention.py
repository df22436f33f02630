"""Attention over a paged KV cache, in plain PyTorch.

The cache of one layer is a flat pool of token slots per KV head, `[Hkv, num_blocks * block_size,
D]` (head-major, so a gathered context is already contiguous per head for the matmuls); a
sequence owns whole blocks, listed in its block table. For one forward pass the engine computes,
once, where each new token's k/v goes (`slot_mapping`) and which slots each sequence attends to
(`kv_slots`, padded), plus the masks; every layer then only scatters, gathers and calls SDPA.
All layers write before they read, so requests in one batch may share freshly filled blocks.

On CPU `attend_rotary` does head norms, RoPE, the cache write and attention in one native call
(`luodi.kernels.fused`) instead of the ~20 small ops below: a decode step one query row per
sequence, any other step chunk by chunk (each sequence's new tokens against its own keys, so no
sequence is padded to another's length). The ops below are the GPU and autograd path.

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
    def chunk_bounds(self) -> torch.Tensor:
        """[B + 1] the first row of each sequence's new tokens in the step's [T] (and T last)."""
        counts = torch.tensor([0] + [s.num_query for s in self.seqs])
        return counts.cumsum(0).to(self.slot_mapping.device)

    @functools.cached_property
    def context_lens(self) -> torch.Tensor:
        """[B] tokens each sequence had cached before this step."""
        return torch.tensor([s.num_context for s in self.seqs], device=self.slot_mapping.device)


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
        meta = self.meta
        k_cache, v_cache = self.k_caches[layer_idx], self.v_caches[layer_idx]  # [Hkv, S, D]
        k_cache.index_copy_(1, meta.slot_mapping, k.transpose(0, 1).to(k_cache.dtype))
        v_cache.index_copy_(1, meta.slot_mapping, v.transpose(0, 1).to(v_cache.dtype))
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
        """Head norms, RoPE, store and attend in one native call; or None.

        q [T, H*D], k and v [T, Hkv*D] unrotated; cos, sin [T, 1, D]; returns [T, H*D]. None tells
        the caller to rotate and call `attend` itself (GPU, no native ops, autograd on).
        """
        meta = self.meta
        k_cache, v_cache = self.k_caches[layer_idx], self.v_caches[layer_idx]  # [Hkv, S, D]
        is_native = k_cache.dtype == torch.float32 and k_cache.shape[2] in fused.NATIVE_HEAD_DIMS
        if not is_native or not fused.enabled_for(q):
            return None
        options = dict(num_heads=q.shape[1] // k_cache.shape[2], scale=scale, sliding_window=sliding_window,
                       q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight, norm_eps=norm_eps,
                       norm_is_offset=norm_is_offset)
        if meta.max_query_len == 1:
            return fused.rope_attend_decode(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping, meta.kv_slots,
                                            meta.seq_lens, **options)
        return fused.rope_attend_chunks(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping, meta.kv_slots,
                                        meta.chunk_bounds, meta.context_lens, **options)

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
