"""Carving a held-out split from the training examples when the user gives no `--eval` file.

Owns which examples are held out, and why. Knows `TrainingExample`s (token ids and loss masks) and
reads their replies through a `decode` function; nothing of models or files.

A small fine-tuning set is often a few facts, each written several ways. Holding out a fact's only
phrasing teaches the model nothing about it and tests it on something it never saw, so an example
is held out only while the training split keeps a *sibling*: an example whose reply (its trained
text) is close to its own, by TF-IDF cosine over terms — numbers, words, CJK characters — so rare
terms (a phone number) weigh most and terms in every reply (a product name) weigh nothing. Exact copies of an example
move together, so no held-out example is also a training example. Sets large enough that losing a
tenth costs little (`FILL_FROM_EXAMPLES`) fill the rest of the split at random when siblings run out
(and sets too large for the quadratic sibling search are carved at random).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from luodi.finetune.data import IGNORE_INDEX, TrainingExample

HELDOUT_FRACTION = 0.15  # of the distinct examples
MAX_HELDOUT = 200
SIBLING_MIN_COSINE = 0.3
FILL_FROM_EXAMPLES = 200
_SEPARATOR = re.compile(r"(?<=\d)[\s,\-](?=\d)")
_TERM = re.compile(r"\d+(?:\.\d+)?|[\u3400-\u9fff]|[^\W\d_\u3400-\u9fff]+")
SIBLING_SEARCH_MAX = 2000  # distinct examples; the search is quadratic, larger sets are carved at random


@dataclass(frozen=True, slots=True)
class Split:
    train: list[TrainingExample]
    heldout: list[TrainingExample]
    reason: str


def carve_heldout(examples: list[TrainingExample], seed: int, decode: Callable[[list[int]], str]) -> Split:
    """Training and held-out examples (seeded); see the module docstring for the rule. `decode`
    turns token ids into text (the tokenizer's)."""
    units = _distinct(examples, decode)
    wanted = min(MAX_HELDOUT, round(HELDOUT_FRACTION * len(units)))
    if wanted < 1 or len(units) < 3:
        return Split(examples, [], f"no held-out split: {len(units)} distinct examples are too few to spare any")
    vectors = tfidf_vectors(list(units.values()))
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    for i in order if len(units) <= SIBLING_SEARCH_MAX else ():
        if len(held) == wanted:
            break
        if any(_cosine(vectors[i], vectors[j]) >= SIBLING_MIN_COSINE for j in order if j != i and j not in held):
            held.add(i)
    num_siblings = len(held)
    if len(held) < wanted and len(examples) >= FILL_FROM_EXAMPLES:
        held.update([i for i in order if i not in held][:wanted - len(held)])
    index = {key: i for i, key in enumerate(units)}
    heldout = [ex for ex in examples if index[_key(ex)] in held]
    train = [ex for ex in examples if index[_key(ex)] not in held]
    return Split(train, heldout, _reason(len(heldout), len(units), num_siblings, seed))


def _reason(num_heldout: int, num_units: int, num_siblings: int, seed: int) -> str:
    if not num_heldout:
        return (f"no held-out split: none of the {num_units} distinct examples has a close sibling to keep "
                "in training — pass --eval to measure learning")
    random_part = num_heldout - num_siblings
    extra = f", {random_part} at random" if random_part > 0 else ""
    return (f"{num_heldout} examples held out of {num_units} distinct (≈{HELDOUT_FRACTION:.0%}, seed {seed}); "
            f"each keeps a similar example in training{extra}")


def _key(example: TrainingExample) -> tuple[int, ...]:
    return tuple(example.input_ids)


def _distinct(
    examples: list[TrainingExample], decode: Callable[[list[int]], str],
) -> dict[tuple[int, ...], list[str]]:
    """Each distinct token sequence -> the terms of its trained text, in first-seen order."""
    units: dict[tuple[int, ...], list[str]] = {}
    for ex in examples:
        if _key(ex) not in units:
            units[_key(ex)] = reply_terms(decode([t for t in ex.labels if t != IGNORE_INDEX]))
    return units


def reply_terms(text: str) -> list[str]:
    """Numbers (separators between digits dropped: a phone number is one term), lowercased words and
    single CJK characters: terms that mean the same in every tokenizer and across languages."""
    return _TERM.findall(_SEPARATOR.sub("", text).lower())


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(w * b.get(t, 0.0) for t, w in a.items())


def tfidf_vectors(docs: list[list[str]]) -> list[dict[str, float]]:
    """Unit-length TF-IDF vectors of term lists (idf = log(N / df): a term in every document weighs
    nothing)."""
    df = Counter(t for doc in docs for t in set(doc))
    vectors = []
    for doc in docs:
        weights = {t: n * math.log(len(docs) / df[t]) for t, n in Counter(doc).items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        vectors.append({t: w / norm for t, w in weights.items() if w})
    return vectors
