"""Naive generation: every step recomputes the whole sequence from scratch, one request at a time.

Slow on purpose and obviously right; the paged, batched, chunked and prefix-cached engine is
tested against it token for token.
"""

from __future__ import annotations

import torch
from torch import nn

from luodi.kernels.attention import PagedAttention, SequenceSlice, build_metadata


@torch.inference_mode()
def full_logits(model: nn.Module, token_ids: list[int]) -> torch.Tensor:
    """Logits [T, V] for every position of one sequence, with a throwaway contiguous cache."""
    return batch_logits(model, [token_ids])


@torch.inference_mode()
def batch_logits(model: nn.Module, sequences: list[list[int]]) -> torch.Tensor:
    """Logits [sum T, V] for every position of several independent sequences in one forward pass,
    the sequences' rows one after another; each sequence owns one block of a throwaway cache."""
    config = model.config
    param = next(model.parameters())
    block_size = max(len(s) for s in sequences)
    shape = (config.num_key_value_heads, block_size * len(sequences), config.head_dim)  # [H, B * T, D]
    k_caches = [torch.zeros(shape, dtype=param.dtype, device=param.device) for _ in range(config.num_hidden_layers)]
    v_caches = [torch.zeros_like(k) for k in k_caches]
    slices = [SequenceSlice(0, len(s), (b,)) for b, s in enumerate(sequences)]
    meta = build_metadata(slices, block_size, param.device)
    ids = torch.tensor([t for s in sequences for t in s], device=param.device)  # [sum T]
    positions = torch.cat([torch.arange(len(s), device=param.device) for s in sequences])  # [sum T]
    return model(ids, positions, PagedAttention(k_caches, v_caches, meta))


def greedy_generate(model: nn.Module, prompt_ids: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt_ids)
    for _ in range(max_tokens):
        tokens.append(int(full_logits(model, tokens)[-1].argmax()))
    return tokens[len(prompt_ids):]
