"""Reciprocal-rank fusion and the cited-answer prompt, against hand-computed values."""

import pytest

from luodi.kb.answer import answer_messages, cited_numbers, numbered_passages
from luodi.kb.document import Hit
from luodi.kb.retrieval import RRF_K, fuse


def hit(chunk_id: int, score: float = 0.0, source: str = "a.md") -> Hit:
    return Hit(chunk_id=chunk_id, text=f"chunk {chunk_id}", source=source, page=None, section=None, score=score)


def test_fusion_scores_are_sums_of_reciprocal_ranks():
    by_text = [hit(1), hit(2), hit(3)]
    by_vector = [hit(3), hit(4), hit(1)]
    fused = fuse([by_text, by_vector], k=4)
    expected = {
        1: 1 / (RRF_K + 1) + 1 / (RRF_K + 3),
        3: 1 / (RRF_K + 3) + 1 / (RRF_K + 1),
        2: 1 / (RRF_K + 2),
        4: 1 / (RRF_K + 2),
    }
    assert [h.chunk_id for h in fused] == [1, 3, 2, 4]  # ties broken by chunk id
    for h in fused:
        assert h.score == pytest.approx(expected[h.chunk_id])


def test_a_chunk_found_by_both_retrievers_beats_one_found_first_by_one():
    fused = fuse([[hit(7), hit(5)], [hit(8), hit(5)]], k=1)
    assert fused[0].chunk_id == 5  # 2/(60+2) > 1/(60+1)


def test_fusion_keeps_k():
    assert len(fuse([[hit(i) for i in range(20)]], k=8)) == 8
    assert fuse([[], []], k=8) == []


def test_passages_are_numbered_in_chunk_order_so_the_prompt_prefix_is_shared():
    first = numbered_passages([hit(9, 0.9), hit(2, 0.5), hit(5, 0.1)])
    second = numbered_passages([hit(5, 0.8), hit(9, 0.7), hit(2, 0.2)])
    assert [h.chunk_id for h in first] == [h.chunk_id for h in second] == [2, 5, 9]
    a = answer_messages("q1?", first)
    b = answer_messages("another question", second)
    assert a[0] == b[0]  # same system message: the engine's prefix cache computes it once
    assert "[1] (a.md)\nchunk 2" in a[0]["content"] and "[3] (a.md)\nchunk 9" in a[0]["content"]


def test_citations_are_read_from_the_answer():
    assert cited_numbers("Paris [1], and Lyon [3][12]. Not [x] or [-1].") == {1, 3, 12}
    assert cited_numbers("没有引用") == set()
