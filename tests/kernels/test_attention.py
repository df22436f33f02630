"""Paged-attention metadata: exact slots, padding and masks for a mixed batch."""

from __future__ import annotations

import torch

from luodi.kernels.attention import SequenceSlice, build_metadata


def test_mixed_batch_slots_padding_and_mask():
    # Sequence A: 5 cached tokens + 1 new (decode); B: 3 new prompt tokens. Block size 4.
    seqs = [SequenceSlice(5, 1, (7, 2)), SequenceSlice(0, 3, (4,))]
    meta = build_metadata(seqs, block_size=4, device=torch.device("cpu"), pad_slot=99)
    assert meta.slot_mapping.tolist() == [2 * 4 + 1, 16, 17, 18]  # A's position 5 is block 2, offset 1
    assert meta.kv_slots.tolist() == [[28, 29, 30, 31, 8, 9], [16, 17, 18, 99, 99, 99]]
    assert meta.query_index.tolist() == [0, 3, 4, 5]  # padded layout [B=2, Q=3]
    mask = meta.mask[:, 0]
    assert mask[0, 0].tolist() == [True] * 6  # A's one query sees all 6 keys
    assert mask[1].tolist() == [
        [True, False, False, False, False, False],
        [True, True, False, False, False, False],
        [True, True, True, False, False, False],
    ]


def test_sliding_window_mask_limits_the_keys_seen():
    meta = build_metadata([SequenceSlice(0, 5, (0, 1))], block_size=4, device=torch.device("cpu"))
    window = meta.sliding_mask(2)[0, 0]
    assert window.tolist()[4] == [False, False, False, True, True]  # position 4 sees 3 and 4
