"""The labelled corpus-cleaning evaluation set (benchmarks/corpus_eval/make_corpus.py) is what it
claims to be: big enough, bilingual, every category present in the numbers issue 17 asks for,
personal data that passes the real checks (GB 11643 check character, Luhn), near duplicates within
the intended 5-gram Jaccard range of their canonical, canonicals first, and deterministic.

Oracles are independent of the generator: the ID-card check character and Luhn sum are recomputed
here from their definitions; Jaccard uses a shingler written here. Does not import luodi.corpus.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

CORPUS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "corpus_eval"
sys.path.insert(0, str(CORPUS_DIR))

import make_corpus  # noqa: E402

REMOVE = ("exact_duplicate", "near_duplicate", "boilerplate", "spam", "other_language",
          "gibberish", "fragment", "repetition", "markup")
MIN_PER_CATEGORY = 40  # each removal category and pii, both languages together
ID_WEIGHTS = [2 ** (17 - i) % 11 for i in range(17)]  # GB 11643-1999: W_i = 2^(i-1) mod 11, i = 18..2


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return make_corpus.build_corpus()


def id_card_ok(value: str) -> bool:
    if not re.fullmatch(r"\d{17}[\dX]", value):
        return False
    total = sum(int(d) * w for d, w in zip(value[:17], ID_WEIGHTS))
    return (12 - total % 11) % 11 == (10 if value[17] == "X" else int(value[17]))


def luhn_ok(digits: str) -> bool:
    doubled = [int(c) if i % 2 == 0 else sum(divmod(int(c) * 2, 10))
               for i, c in enumerate(reversed(digits))]
    return sum(doubled) % 10 == 0


def grams(text: str, language: str) -> set:
    units = list(re.sub(r"[\W_]", "", text)) if language == "zh" else re.findall(r"\w+", text.lower())
    return {" ".join(units[i:i + 5]) for i in range(len(units) - 4)}


def test_size_languages_and_categories(corpus):
    assert len(corpus) >= 600
    assert len({r["id"] for r in corpus}) == len(corpus)
    languages = Counter(r["language"] for r in corpus)
    assert languages["zh"] >= 250 and languages["en"] >= 250
    assert abs(languages["zh"] - languages["en"]) <= 0.1 * len(corpus)
    categories = Counter(r["category"] for r in corpus)
    assert set(categories) == {"good", "pii", *REMOVE}
    for category in (*REMOVE, "pii"):
        assert categories[category] >= MIN_PER_CATEGORY, category
    assert categories["good"] >= 120
    assert len({r["language"] for r in corpus if r["category"] == "other_language"}) >= 6


def test_good_documents_are_long_and_distinct(corpus):
    kept = [r for r in corpus if r["category"] in ("good", "pii")]
    for r in kept:
        size = len(r["text"]) if r["language"] == "zh" else len(r["text"].split())
        assert size >= (200 if r["language"] == "zh" else 150), r["id"]
    for language in ("zh", "en"):
        sets = [grams(r["text"], language) for r in kept if r["language"] == language]
        worst = max(len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1:])
        assert worst < 0.5, language


def test_personal_data_passes_the_real_checks(corpus):
    kinds = Counter()
    for r in corpus:
        assert bool(r["pii"]) == (r["category"] == "pii"), r["id"]
        for item in r["pii"]:
            kinds[item["kind"]] += 1
            assert item["value"] in r["text"], r["id"]
            if item["kind"] == "id_card":
                assert id_card_ok(item["value"]), item["value"]
            if item["kind"] == "bank_card":
                digits = item["value"].replace(" ", "")
                assert 16 <= len(digits) <= 19 and luhn_ok(digits), item["value"]
            if item["kind"] == "phone":
                digits = re.sub(r"\D", "", item["value"])
                assert (re.fullmatch(r"(86)?1[3-9]\d{9}", digits)
                        or re.fullmatch(r"(44|1)\d{9,10}", digits)), item["value"]
            if item["kind"] == "email":
                assert re.fullmatch(r"[\w.]+@[\w.]+\.[a-z]{2,}", item["value"]), item["value"]
    assert min(kinds[k] for k in ("email", "phone", "id_card", "bank_card")) >= 10, kinds
    phones = [i["value"] for r in corpus for i in r["pii"] if i["kind"] == "phone"]
    assert any(p.startswith("+44") for p in phones) and any(p.startswith("+1 ") for p in phones)


def test_checks_reject_corrupted_numbers():
    # the oracles can fail: one changed digit breaks both checks
    assert id_card_ok("11010519491231002X") and not id_card_ok("11010519491231003X")
    assert luhn_ok("4539578763621486") and not luhn_ok("4539578763621487")


def test_duplicate_clusters(corpus):
    clusters: dict[str, list[tuple[int, dict]]] = {}
    for position, r in enumerate(corpus):
        if r["cluster"]:
            clusters.setdefault(r["cluster"], []).append((position, r))
    assert len(clusters) >= 40
    for name, members in clusters.items():
        (_, canonical), *copies = members
        assert canonical["category"] == "good" and copies, name
        for _, copy in copies:
            if copy["category"] == "exact_duplicate":
                assert copy["text"] == canonical["text"], name
            else:
                assert copy["category"] == "near_duplicate", name
                a, b = grams(canonical["text"], copy["language"]), grams(copy["text"], copy["language"])
                assert 0.8 <= len(a & b) / len(a | b) < 0.97, name


def test_generation_is_deterministic_and_matches_the_committed_file(corpus):
    again = make_corpus.build_corpus()
    assert again == corpus
    assert make_corpus.build_corpus(seed=make_corpus.SEED + 1) != corpus
    with (CORPUS_DIR / "corpus.jsonl").open(encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == corpus
