"""Exact and near deduplication, keeping the first document of each cluster in input order.

Owns the corpus-wide steps. Each has two halves so the work parallelizes: `key(doc)` runs with
the per-document steps in any worker (a hash; a MinHash signature over 5-grams of units —
characters for Chinese, words for English), and `decide(doc_id, key)` runs once over the whole
corpus in input order, which is what makes the kept document of a cluster the first one, the
same on any number of workers. Near dedup is greedy: a document is dropped when it is as
similar as `threshold` (estimated Jaccard) to a document kept before it.
Knows nothing about files or the other steps.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from luodi.corpus.document import Document, units

# datasketch 2's permutation scheme, named so signatures written by one run read back the same
SCHEME = "affine32"


def exact_key(text: str) -> str:
    """A hash of the text's units, lower-cased: equal up to case, spacing and punctuation."""
    return hashlib.sha1(" ".join(units(text.lower())).encode()).hexdigest()


@dataclass(slots=True)
class ExactDedup:
    """Drops a document whose normalized text equals an earlier kept one's."""

    name: ClassVar[str] = "exact_dedup"
    _seen: set[str] = field(default_factory=set, repr=False)

    def key(self, doc: Document) -> str:
        return exact_key(doc.text)

    def decide(self, doc_id: str, key: str) -> str | None:
        if key in self._seen:
            return "duplicate"
        self._seen.add(key)
        return None


@dataclass(slots=True)
class NearDedup:
    """MinHash LSH (datasketch) over unit 5-grams; drops a document near an earlier kept one."""

    name: ClassVar[str] = "near_dedup"
    ngram: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    seed: int = 1
    _lsh: Any = field(default=None, repr=False)
    _signatures: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def key(self, doc: Document) -> str:
        """The document's MinHash signature, base64 of its uint64 hash values."""
        return base64.b64encode(self.signature(doc.text).astype("<u8").tobytes()).decode()

    def signature(self, text: str) -> np.ndarray:
        from datasketch import MinHash

        minhash = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=SCHEME)
        minhash.update_batch([" ".join(s).encode() for s in shingles(text, self.ngram)])
        return minhash.hashvalues

    def decide(self, doc_id: str, key: str) -> str | None:
        from datasketch import MinHash, MinHashLSH

        if self._lsh is None:
            self._lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        values = np.frombuffer(base64.b64decode(key), dtype="<u8").astype(np.uint64)
        minhash = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=SCHEME, hashvalues=values)
        for other in sorted(self._lsh.query(minhash)):
            if float(np.mean(self._signatures[other] == values)) >= self.threshold:
                return "near_duplicate"
        if doc_id not in self._signatures:  # ids are the user's: a repeated id is kept, not re-indexed
            self._lsh.insert(doc_id, minhash)
            self._signatures[doc_id] = values
        return None


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of n-grams of the text's units (lower-cased); a shorter text is one shingle."""
    found = units(text.lower())
    if len(found) <= n:
        return {tuple(found)}
    return {tuple(found[i:i + n]) for i in range(len(found) - n + 1)}
