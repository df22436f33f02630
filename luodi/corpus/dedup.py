"""Exact and near deduplication, keeping the first document of each cluster in input order.

Owns the corpus-wide steps. Each has two halves so the work parallelizes: `key(doc)` runs with
the per-document steps in any worker (a hash; a MinHash signature over 5-grams of units —
characters for Chinese, words for English), and `decide(doc_id, key)` runs once over the whole
corpus in input order, which is what makes the kept document of a cluster the first one, the
same on any number of workers. Near dedup is greedy: a document is dropped when it is as
similar as `threshold` (5-gram Jaccard) to a document kept before it. LSH only finds candidates,
with bands x rows tuned for the lower `lsh_threshold` so a pair at `threshold` is almost always
compared; each candidate is confirmed by its MinHash estimate, which may fall short of the true
Jaccard by `confirm_std_errors` standard errors (sqrt(J(1-J)/num_perm)), so recall near
`threshold` does not hang on the estimator's noise.
Knows nothing about files or the other steps.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
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
    lsh_threshold: float = 0.55
    confirm_std_errors: float = 2.5
    seed: int = 1
    _lsh: Any = field(default=None, repr=False)
    _signatures: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.lsh_threshold <= self.threshold < 1.0:
            raise ValueError(f"near_dedup needs 0 < lsh_threshold <= threshold < 1, got lsh_threshold="
                             f"{self.lsh_threshold} and threshold={self.threshold}")

    @property
    def min_estimate(self) -> float:
        """The MinHash estimate that confirms a candidate: `threshold` less the allowed standard errors."""
        spread = math.sqrt(self.threshold * (1.0 - self.threshold) / self.num_perm)
        return self.threshold - self.confirm_std_errors * spread

    def key(self, doc: Document) -> str:
        """The document's MinHash signature, base64 of its uint64 hash values."""
        return base64.b64encode(self.signature(doc.text).astype("<u8").tobytes()).decode()

    def signature(self, text: str) -> np.ndarray:
        minhash = _minhash(self.num_perm, self.seed)
        minhash.update_batch([" ".join(s).encode() for s in shingles(text, self.ngram)])
        return minhash.hashvalues

    def decide(self, doc_id: str, key: str) -> str | None:
        from datasketch import MinHashLSH

        if self._lsh is None:
            self._lsh = MinHashLSH(threshold=self.lsh_threshold, num_perm=self.num_perm)
        values = np.frombuffer(base64.b64decode(key), dtype="<u8").astype(np.uint64)
        minhash = _minhash(self.num_perm, self.seed, values)
        for other in sorted(self._lsh.query(minhash)):
            if float(np.mean(self._signatures[other] == values)) >= self.min_estimate:
                return "near_duplicate"
        if doc_id not in self._signatures:  # ids are the user's: a repeated id is kept, not re-indexed
            self._lsh.insert(doc_id, minhash)
            self._signatures[doc_id] = values
        return None


def _minhash(num_perm: int, seed: int, hashvalues: np.ndarray | None = None) -> Any:
    """A datasketch MinHash sharing this process's one permutation set for (num_perm, seed):
    datasketch would otherwise draw the permutations again for every document."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME, hashvalues=hashvalues,
                   permutations=_permutations(num_perm, seed))


@functools.cache
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of n-grams of the text's units (lower-cased); a shorter text is one shingle."""
    found = units(text.lower())
    if len(found) <= n:
        return {tuple(found)}
    return {tuple(found[i:i + n]) for i in range(len(found) - n + 1)}
