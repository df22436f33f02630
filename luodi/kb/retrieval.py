"""Hybrid retrieval: BM25 and vector search, fused by reciprocal rank.

Each retriever alone fails differently — BM25 misses paraphrases, vectors miss rare names and
numbers — so both run with a deeper candidate list and their ranks are fused (Cormack et al.,
2009: score = Σ 1 / (60 + rank)). Fusion uses ranks only, so BM25 scores and cosines need no
common scale.
"""

from __future__ import annotations

from dataclasses import replace

from luodi.errors import InvalidParameterError
from luodi.kb.document import Hit
from luodi.kb.embedding import Embedder
from luodi.kb.store.base import Store

DEFAULT_K = 8
RRF_K = 60  # the constant of reciprocal-rank fusion; 60 as in the paper
CANDIDATES_PER_RETRIEVER = 4  # each retriever proposes this many × k before fusion


def fuse(rankings: list[list[Hit]], k: int) -> list[Hit]:
    """Reciprocal-rank fusion of ranked lists into the k best, each with its fused score."""
    scores: dict[int, float] = {}
    hits: dict[int, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
            hits.setdefault(hit.chunk_id, hit)
    best = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))[:k]
    return [replace(hits[chunk_id], score=scores[chunk_id]) for chunk_id in best]


def search(store: Store, embedder: Embedder, kb: str, query: str, *, owner: str, k: int = DEFAULT_K) -> list[Hit]:
    """The k chunks of `kb` that best match `query`, best first."""
    if not query.strip():
        raise InvalidParameterError("the query is empty: ask something", param="query")
    if k < 1:
        raise InvalidParameterError(f"k must be at least 1, got {k}", param="k")
    depth = k * CANDIDATES_PER_RETRIEVER
    by_text = store.search_text(kb, query, depth, owner=owner)
    by_vector = store.search_vector(kb, embedder.embed_query(query), depth, owner=owner)
    return fuse([by_text, by_vector], k)
