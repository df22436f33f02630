"""Synthetic zh + en corpora for the pipeline tests: prose documents made from sentence pools
(seeded, so every run writes the same files), plus labelled bad ones."""

from __future__ import annotations

import json
import random
from pathlib import Path

from corpus_texts import EN, EN_OTHER, ZH, ZH_OTHER

EN_SENTENCES = [s.strip() + "." for s in (EN + " " + EN_OTHER).replace("\n", " ").split(".") if s.strip()]
ZH_SENTENCES = [s.strip() + "。" for s in (ZH + ZH_OTHER).replace("\n", "").split("。") if s.strip()]


def prose(rng: random.Random, language: str, n: int) -> str:
    """A document of `n` sentences drawn from the language's pool, with a unique tail sentence."""
    pool = EN_SENTENCES if language == "en" else ZH_SENTENCES
    body = rng.sample(pool, n)
    tail = (f"This note was filed as record {rng.randrange(10**9)} by the town archive."
            if language == "en" else f"本文由档案馆编号{rng.randrange(10**9)}收录。")
    return (" " if language == "en" else "").join(body + [tail])


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def synthetic_corpus(path: Path, num_docs: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    records = [{"id": f"doc-{i:05d}", "text": prose(rng, "en" if i % 2 else "zh", rng.randrange(5, 8)),
                "source": "synthetic"} for i in range(num_docs)]
    return write_jsonl(path, records)
