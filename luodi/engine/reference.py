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
    config = model.config
    param = next(model.parameters())
    n = len(token_ids)
    shape = (config.num_key_value_heads, n, config.head_dim)
    k_caches = [torch.zeros(shape, dtype=param.dtype, device=param.device) for _ in range(config.num_hidden_layers)]
    v_caches = [torch.zeros_like(k) for k in k_caches]
    meta = build_metadata([SequenceSlice(0, n, (0,))], n, param.device)
    ids = torch.tensor(token_ids, device=param.device)
    positions = torch.arange(n, device=param.device)
    return model(ids, positions, PagedAttention(k_caches, v_caches, meta))


def greedy_generate(model: nn.Module, prompt_ids: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt_ids)
    for _ in range(max_tokens):
        tokens.append(int(full_logits(model, tokens)[-1].argmax()))
    return tokens[len(prompt_ids):]
