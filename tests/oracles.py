"""Comparison rules shared by the tests that check Luodi's tokens against a reference model."""

from __future__ import annotations

import torch

NEAR_TIE = 0.1


def assert_greedy_match(ours: list[int], ref: list[int], ref_logits: torch.Tensor, near_tie: float = NEAR_TIE) -> None:
    """Tokens must be identical, except that they may part once at a near tie (vLLM's rule).

    `ref_logits[i]` are the reference's logits when choosing `ref[i]`. The sequences may differ
    first at position i only if the reference's top-2 gap there is below NEAR_TIE and our token
    is its second choice; everything after that point is no longer comparable.
    """
    for i, (a, b) in enumerate(zip(ours, ref, strict=False)):
        if a == b:
            continue
        top2 = ref_logits[i].float().topk(2)
        gap = float(top2.values[0] - top2.values[1])
        assert gap < near_tie and a == int(top2.indices[1]), (
            f"tokens part at position {i}: ours {a}, reference {b} (top-2 gap {gap:.4f}); "
            f"ours {ours}, reference {ref}"
        )
        return
    assert len(ours) == len(ref), f"lengths differ: {len(ours)} vs {len(ref)}"
