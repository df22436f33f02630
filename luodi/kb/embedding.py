"""The Embedder protocol: text → L2-normalized float32 vectors, offline.

Passages and queries are embedded apart because some models (e5) are trained with a different
prefix for each. `count_tokens` is the embedder's own tokenizer count, so chunking can budget
chunks to what the embedder reads (`max_tokens`).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Embedder(Protocol):
    name: str  # stored with a knowledge base: its vectors are only comparable to this embedder's
    dim: int
    max_tokens: int

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalized."""

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalized."""

    def count_tokens(self, text: str) -> int: ...
