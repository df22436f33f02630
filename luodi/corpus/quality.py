"""The quality classifier: a small, fast model distilled from Luodi's own LLM, as FineWeb-Edu and
CCI distilled an LLM judge, and the `quality` step that applies it to every document.

Owns hashed n-gram features (characters 1–3-grams for Chinese and other CJK text, word uni- and
bigrams otherwise, signed feature hashing into `num_buckets` buckets, log counts, L2-normalized),
a ridge regression fitted in numpy (conjugate gradient, no randomness) to the teacher's bits per
character standardized per language, and the per-language drop threshold: the `drop_percentile`
of out-of-fold predictions on the training sample, so the share dropped on the corpus is about
what the percentile says. Also the training sample: a bottom-k sample by hash of id and text (the
same documents whatever the file order or number of workers), passed through the recipe's steps
before `quality` so the teacher scores documents the classifier will actually see. Saved as
safetensors (weights) + JSON (everything else); no pickle.
Must not know: how the teacher computes its scores, files other than its own.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from luodi.corpus.document import Document, Drop, cjk_fraction, is_cjk_language, units
from luodi.errors import LuodiError

MAX_FEATURE_CHARS = 4000  # features from the document's beginning, as the LLM sees only its first tokens
MIN_SAMPLE = 8  # fewer scored documents than this cannot train a classifier
NUM_FOLDS = 4  # out-of-fold predictions set the thresholds
CG_ITERATIONS = 200
DEFAULT_GROUP = "default"  # statistics over the whole sample, for languages it lacks
CLASSIFIER_FILE = "quality_classifier"  # .json + .safetensors in the output folder


class QualityError(LuodiError):
    """The quality classifier cannot be trained or loaded."""


# -- features ----------------------------------------------------------------------------------

def ngrams(text: str, language: str | None) -> list[str]:
    """The text's n-grams: CJK character 1–3-grams, or word uni- and bigrams, lower-cased, each
    tagged by kind so a word and a character never share a name."""
    text = text[:MAX_FEATURE_CHARS].lower()
    cjk = is_cjk_language(language) if language and language != "unknown" else cjk_fraction(text) > 0.5
    if cjk:
        chars = [c for c in text if not c.isspace()]
        return [f"c{n}:" + "".join(chars[i:i + n]) for n in (1, 2, 3) for i in range(len(chars) - n + 1)]
    words = units(text)
    return [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]


def features(text: str, language: str | None, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse feature vector (bucket indices, values): signed hashing (crc32: stable across runs
    and processes), log(1 + |count|), L2-normalized, plus a bias feature at index `num_buckets`."""
    grams = ngrams(text, language)
    hashes = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))
    signs = np.where(hashes >> np.uint64(31) & np.uint64(1), -1.0, 1.0)
    buckets, inverse = np.unique((hashes % np.uint64(num_buckets)).astype(np.int64), return_inverse=True)
    counts = np.bincount(inverse, weights=signs, minlength=len(buckets))
    values = np.sign(counts) * np.log1p(np.abs(counts))
    norm = float(np.linalg.norm(values))
    if norm > 0:
        values = values / norm
    return np.append(buckets, num_buckets), np.append(values, 1.0)


@dataclass(frozen=True, slots=True)
class SparseRows:
    """Rows of hashed features in CSR form: row i is indices/values[indptr[i]:indptr[i+1]]."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    num_columns: int

    @classmethod
    def build(cls, rows: list[tuple[np.ndarray, np.ndarray]], num_columns: int) -> SparseRows:
        indptr = np.cumsum([0] + [len(i) for i, _ in rows])
        return cls(indptr, np.concatenate([i for i, _ in rows]), np.concatenate([v for _, v in rows]), num_columns)

    def take(self, rows: np.ndarray) -> SparseRows:
        return SparseRows.build([self.row(int(r)) for r in rows], self.num_columns)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.indices[lo:hi], self.values[lo:hi]

    def dot(self, w: np.ndarray) -> np.ndarray:  # X @ w; every row has the bias, none is empty
        return np.add.reduceat(w[self.indices] * self.values, self.indptr[:-1])

    def tdot(self, r: np.ndarray) -> np.ndarray:  # X.T @ r
        weights = self.values * np.repeat(r, np.diff(self.indptr))
        return np.bincount(self.indices, weights=weights, minlength=self.num_columns)


def fit_ridge(x: SparseRows, y: np.ndarray, l2: float) -> np.ndarray:
    """Weights minimizing |Xw - y|² + l2 |w|², by conjugate gradient on the normal equations
    (deterministic: no sampling, fixed iteration order)."""
    w = np.zeros(x.num_columns)
    r = x.tdot(y)  # residual of (XᵀX + l2 I) w = Xᵀy at w = 0
    p, rr = r.copy(), float(r @ r)
    tolerance = 1e-10 * max(rr, 1e-30)
    for _ in range(CG_ITERATIONS):
        if rr <= tolerance:
            break
        ap = x.tdot(x.dot(p)) + l2 * p
        alpha = rr / float(p @ ap)
        w += alpha * p
        r -= alpha * ap
        rr_next = float(r @ r)
        p = r + (rr_next / rr) * p
        rr = rr_next
    return w


# -- the classifier ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LanguageStats:
    mean: float  # teacher bits per character over the sample's documents of the language
    std: float
    threshold: float  # predicted bits per character above which a document is dropped


@dataclass(frozen=True)
class QualityClassifier:
    """Predicts a document's teacher bits per character from hashed n-grams."""

    weights: np.ndarray  # [num_buckets + 1], the last is the bias
    num_buckets: int
    languages: dict[str, LanguageStats]  # per language, and DEFAULT_GROUP
    info: dict[str, Any]  # how it was trained: teacher, sample size, held-out Spearman, fingerprint

    def stats(self, language: str | None) -> LanguageStats:
        return self.languages.get(language or "", self.languages[DEFAULT_GROUP])

    def predict_z(self, text: str, language: str | None) -> float:
        indices, values = features(text, language, self.num_buckets)
        return float(self.weights[indices] @ values)

    def predict_bpc(self, text: str, language: str | None) -> float:
        stats = self.stats(language)
        return stats.mean + stats.std * self.predict_z(text, language)

    def save(self, stem: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"weights": self.weights.astype(np.float32)}, str(_path(stem, ".safetensors")))
        meta = {"num_buckets": self.num_buckets, "info": self.info,
                "languages": {k: {"mean": v.mean, "std": v.std, "threshold": v.threshold}
                              for k, v in self.languages.items()}}
        _path(stem, ".json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, stem: Path) -> QualityClassifier:
        from safetensors.numpy import load_file

        stem = Path(stem)
        try:
            meta = json.loads(_path(stem, ".json").read_text(encoding="utf-8"))
            weights = load_file(str(_path(stem, ".safetensors")))["weights"].astype(np.float64)
        except (OSError, ValueError, KeyError) as exc:
            raise QualityError(f"cannot load the quality classifier {stem}(.json, .safetensors): {exc}; train "
                               "one with `luodi corpus clean --llm-filter MODEL`") from exc
        languages = {k: LanguageStats(**v) for k, v in meta["languages"].items()}
        return cls(weights, int(meta["num_buckets"]), languages, meta["info"])


def fit_classifier(texts: list[str], languages: list[str | None], bpcs: list[float], *, num_buckets: int = 2**18,
                   l2: float = 1.0, drop_percentile: float = 90.0, info: dict[str, Any] | None = None,
                   ) -> QualityClassifier:
    """A classifier trained to predict `bpcs` (the teacher's), standardized per language."""
    if len(texts) < MIN_SAMPLE:
        raise QualityError(f"only {len(texts)} sampled documents could be scored; at least {MIN_SAMPLE} are needed "
                           "to train the quality classifier: give more input or a larger sample_size")
    groups = [_group(lang, languages) for lang in languages]
    y = np.asarray(bpcs, dtype=np.float64)
    moments = {g: _moments(y[[i for i, h in enumerate(groups) if h == g]]) for g in set(groups)}
    moments[DEFAULT_GROUP] = _moments(y)
    z = np.array([(b - moments[g][0]) / moments[g][1] for b, g in zip(y, groups)])
    x = SparseRows.build([features(t, lang, num_buckets) for t, lang in zip(texts, languages)], num_buckets + 1)
    held_out = _out_of_fold(x, z, l2)
    predicted = np.array([moments[g][0] + moments[g][1] * p for g, p in zip(groups, held_out)])
    stats = {}
    for g, (mean, std) in moments.items():
        mine = predicted if g == DEFAULT_GROUP else predicted[[i for i, h in enumerate(groups) if h == g]]
        stats[g] = LanguageStats(mean, std, float(np.percentile(mine, drop_percentile)))
    info = {**(info or {}), "num_documents": len(texts), "held_out_spearman": round(spearman(held_out, z), 4)}
    return QualityClassifier(fit_ridge(x, z, l2), num_buckets, stats, info)


def _group(language: str | None, languages: list[str | None]) -> str:
    """A language with enough sampled documents has its own statistics; the rest share DEFAULT_GROUP."""
    return language if language and languages.count(language) >= MIN_SAMPLE else DEFAULT_GROUP


def _moments(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std()) or 1.0


def _out_of_fold(x: SparseRows, z: np.ndarray, l2: float) -> np.ndarray:
    """Each document's prediction by a model fitted without it (fold = index mod NUM_FOLDS)."""
    folds = np.arange(len(z)) % NUM_FOLDS
    predicted = np.zeros(len(z))
    for fold in range(NUM_FOLDS):
        train, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        predicted[test] = x.take(test).dot(fit_ridge(x.take(train), z[train], l2))
    return predicted


def spearman(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Spearman rank correlation (ties broken by position)."""
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom else 0.0


# -- the step ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Quality:
    """Drops a document whose predicted bits per character is above its language's threshold."""

    name: ClassVar[str] = "quality"
    model: str | None = None  # the teacher LLM; None: the step is off
    classifier: str | None = None  # a trained classifier (path without suffix); None: trained on a sample
    sample_size: int = 2000
    drop_percentile: float = 90.0
    max_tokens: int = 512
    num_buckets: int = 262144
    l2: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.drop_percentile <= 100:
            raise ValueError(f"quality: drop_percentile={self.drop_percentile} must be in (0, 100]")
        if self.num_buckets < 2 or self.sample_size < MIN_SAMPLE:
            raise ValueError(f"quality: num_buckets must be at least 2 and sample_size at least {MIN_SAMPLE}")

    def __call__(self, doc: Document) -> Document | Drop:
        if self.classifier is None:
            raise QualityError("the quality step has no classifier; run it through `luodi corpus clean "
                               "--llm-filter MODEL`, or name a trained one with `classifier:` in the recipe")
        found = _classifier(self.classifier, _modified(self.classifier))
        predicted = found.predict_bpc(doc.text, doc.language)
        doc = doc.with_stats(self.name, {"predicted_bpc": round(predicted, 4)})
        return Drop("low_quality") if predicted > found.stats(doc.language).threshold else doc


@functools.lru_cache(maxsize=4)
def _classifier(stem: str, modified: int) -> QualityClassifier:  # `modified`: a retrained file is reloaded
    return QualityClassifier.load(Path(stem))


def _path(stem: str | Path, suffix: str) -> Path:
    return Path(f"{stem}{suffix}")


def _modified(stem: str) -> int:
    try:
        return _path(Path(stem), ".safetensors").stat().st_mtime_ns
    except OSError:
        return 0


# -- training on a sample of the corpus ---------------------------------------------------------

def train_for_corpus(inputs: list[Path], out: Path, recipe: Any, *, progress: bool = False) -> Any:
    """The recipe with its quality step's classifier trained on a sample of `inputs` (or reused from
    `out` when an earlier run trained it on the same sample with the same settings)."""
    from luodi.corpus.llm_score import BpcScorer
    from luodi.corpus.readers import read_inputs

    spec = next(s for s in recipe.document_steps if s.name == Quality.name)
    step = Quality(**spec.params)
    before = recipe.build_document_steps()[:[s.name for s in recipe.document_steps].index(Quality.name)]
    docs = sample_documents(read_inputs(inputs, recipe.text_field, recipe.id_field), before, step.sample_size,
                            step.seed)
    stem = out / CLASSIFIER_FILE
    fingerprint = _fingerprint(step, docs)
    if not _is_trained(stem, fingerprint):
        scorer = BpcScorer.load(str(step.model), max_tokens=step.max_tokens, progress=progress)
        scores = scorer.score([d.text for d in docs], progress=progress)
        scored = [(d, s.bits_per_char) for d, s in zip(docs, scores) if s.bits_per_char is not None]
        out.mkdir(parents=True, exist_ok=True)
        fit_classifier([d.text for d, _ in scored], [d.language for d, _ in scored], [b for _, b in scored],
                       num_buckets=step.num_buckets, l2=step.l2, drop_percentile=step.drop_percentile,
                       info={"teacher": step.model, "fingerprint": fingerprint}).save(stem)
    return recipe.with_step_params(Quality.name, classifier=str(stem))


def sample_documents(items: Any, steps: list[Any], size: int, seed: int) -> list[Document]:
    """Up to `size` documents that pass `steps`, drawn as the smallest hashes of (seed, id, text)
    among 2 x size candidates: uniform, and independent of input order."""
    heap: list[tuple[int, int, Document]] = []  # max-heap by hash (negated), the count breaks ties
    for n, doc in enumerate(d for d in items if isinstance(d, Document)):
        key = int.from_bytes(hashlib.sha1(f"{seed}\0{doc.id}\0{doc.text}".encode()).digest()[:8], "big")
        if len(heap) < 2 * size:
            heapq.heappush(heap, (-key, -n, doc))
        elif -heap[0][0] > key:
            heapq.heapreplace(heap, (-key, -n, doc))
    kept: list[Document] = []
    for _, _, doc in sorted(heap, reverse=True):  # smallest hash first
        for step in steps:
            result = step(doc)
            if isinstance(result, Drop):
                break
            doc = result
        else:
            kept.append(doc)
        if len(kept) == size:
            break
    return kept


def _fingerprint(step: Quality, docs: list[Document]) -> str:
    digest = hashlib.sha256(json.dumps([step.model, step.max_tokens, step.num_buckets, step.l2,
                                        step.drop_percentile]).encode())
    for doc in docs:
        digest.update(f"{doc.id}\0{doc.text}\0".encode())
    return digest.hexdigest()


def _is_trained(stem: Path, fingerprint: str) -> bool:
    try:
        meta = json.loads(_path(stem, ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("info", {}).get("fingerprint") == fingerprint and _path(stem, ".safetensors").exists()
