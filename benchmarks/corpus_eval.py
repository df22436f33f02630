"""Corpus-cleaning quality on the labelled evaluation set (benchmarks/corpus_eval/).

The set (660 documents, Chinese and English, built by benchmarks/corpus_eval/make_corpus.py) is
written as JSONL with only "id" and "text", cleaned by `luodi.corpus.clean`, and scored from
out/kept.jsonl and out/removed.jsonl against the labels:

- removal recall per category (exact and near duplicates, boilerplate, spam, other languages,
  gibberish / mojibake, fragments, repetition, markup): share of the category's documents removed;
  for gibberish also the share removed *or verifiably repaired*, since repairing beats removing:
  the garbled document was kept and its kept text equals, character for character, what the
  same cleaner keeps of the article before it was garbled (the generator's `original`);
- good documents kept (categories good and pii), and the ids of those removed, with stage and
  reason;
- PII: every labelled value absent from its document's kept text, and its kind's placeholder
  present; placeholders in good documents that have no PII (false positives);
- duplicate clusters: exactly one member kept, and whether it is the canonical (the first).

Targets (issue 17): recall >= 0.95 per category, good kept >= 0.97, every PII instance masked,
exactly one document kept per cluster. A benchmark: it prints and records, it never fails.

    python benchmarks/corpus_eval.py [--workers 1] [--recipe my.yaml] [--out DIR]

Prints JSON and writes benchmarks/results/corpus_eval.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "corpus_eval"))

import make_corpus  # noqa: E402

RESULTS = ROOT / "results" / "corpus_eval.json"
TARGETS = {"removal_recall": 0.95, "good_kept": 0.97, "pii_masked": 1.0, "clusters_one_kept": 1.0}
MAX_LISTED = 10


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_clean(records: list[dict], out: Path, workers: int, recipe: Path | None) -> tuple[dict, dict, float]:
    """Cleans the unlabelled corpus; the kept texts and removal verdicts by id, and the seconds."""
    from luodi.corpus import clean

    source = out / "input" / "corpus.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    make_corpus.write_corpus([{"id": r["id"], "text": r["text"]} for r in records], source)
    start = time.perf_counter()
    clean([source], out / "cleaned", languages=("zh", "en"), recipe=recipe, workers=workers)
    seconds = time.perf_counter() - start
    kept = {r["id"]: r["text"] for r in read_jsonl(out / "cleaned" / "kept.jsonl")}
    removed = {r["id"]: r for r in read_jsonl(out / "cleaned" / "removed.jsonl")}
    return kept, removed, seconds


def preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width] + "…"


def clean_originals(records: list[dict], out: Path, workers: int, recipe: Path | None) -> dict:
    """What the cleaner keeps of each garbled document's article before it was garbled, by the
    garbled document's id (a separate run, so the originals meet no copies of themselves)."""
    originals = [{"id": r["id"], "text": r["original"]} for r in records if r.get("original")]
    kept, _, _ = run_clean(originals, out / "originals", workers, recipe)
    return kept


def is_repaired(record: dict, kept: dict, kept_originals: dict) -> bool:
    """Kept, and equal to what the cleaner keeps of the original: the repair restored the article."""
    return record["id"] in kept and record["id"] in kept_originals \
        and kept[record["id"]] == kept_originals[record["id"]]


def score_removals(records: list[dict], kept: dict, removed: dict, kept_originals: dict) -> dict:
    """Recall per removal category, the stages that removed them, and up to ten misses each."""
    out = {}
    for category in make_corpus.REMOVE:
        members = [r for r in records if r["category"] == category]
        missed = [r for r in members if r["id"] not in removed]
        stages: dict[str, int] = {}
        for r in members:
            if r["id"] in removed:
                key = f"{removed[r['id']]['stage']}:{removed[r['id']]['reason']}"
                stages[key] = stages.get(key, 0) + 1
        row = {"documents": len(members), "removed": len(members) - len(missed),
               "recall": round((len(members) - len(missed)) / len(members), 4),
               "by_stage": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
               "missed": [{"id": r["id"], "language": r["language"], "text": preview(r["text"])}
                          for r in missed[:MAX_LISTED]]}
        if category == "gibberish":
            repaired = [r for r in missed if is_repaired(r, kept, kept_originals)]
            row["repaired"] = len(repaired)
            row["kept_unrepaired"] = [r["id"] for r in missed if r not in repaired][:MAX_LISTED]
            row["recall_counting_repairs"] = round((row["removed"] + len(repaired)) / len(members), 4)
        out[category] = row
    return out


def score_kept(records: list[dict], removed: dict) -> dict:
    """Share of good documents (good and pii) kept, overall and per language; the removed ones."""
    members = [r for r in records if r["category"] in make_corpus.KEEP]
    lost = [r for r in members if r["id"] in removed]
    per_language = {}
    for language in make_corpus.LANGUAGES:
        mine = [r for r in members if r["language"] == language]
        per_language[language] = round(sum(r["id"] not in removed for r in mine) / len(mine), 4)
    return {"documents": len(members), "kept": len(members) - len(lost),
            "rate": round((len(members) - len(lost)) / len(members), 4), "per_language": per_language,
            "removed": [{"id": r["id"], "category": r["category"], "language": r["language"],
                         "stage": removed[r["id"]]["stage"], "reason": removed[r["id"]]["reason"],
                         "text": preview(r["text"])} for r in lost[:MAX_LISTED]],
            "num_removed_listed_of": len(lost)}


def score_pii(records: list[dict], kept: dict) -> dict:
    """Every labelled value gone from its kept document and its placeholder there; false positives."""
    total = masked = 0
    failures, removed_docs = [], []
    for r in (r for r in records if r["category"] == "pii"):
        if r["id"] not in kept:
            removed_docs.append(r["id"])
            total += len(r["pii"])
            continue
        text = kept[r["id"]]
        for item in r["pii"]:
            total += 1
            placeholder = make_corpus.PLACEHOLDER[item["kind"]]
            if item["value"] not in text and placeholder in text:
                masked += 1
            else:
                failures.append({"id": r["id"], "kind": item["kind"], "value": item["value"],
                                 "value_left": item["value"] in text,
                                 "placeholder_missing": placeholder not in text})
    placeholders = tuple(make_corpus.PLACEHOLDER.values())
    spurious = [r["id"] for r in records if r["category"] == "good" and r["id"] in kept
                and any(p in kept[r["id"]] for p in placeholders)]
    return {"instances": total, "masked": masked, "rate": round(masked / total, 4) if total else 1.0,
            "pii_documents_removed": removed_docs[:MAX_LISTED],
            "failures": failures[:MAX_LISTED], "num_failures": len(failures),
            "false_positive_documents": spurious[:MAX_LISTED], "num_false_positive_documents": len(spurious)}


def score_clusters(records: list[dict], kept: dict) -> dict:
    """Each duplicate cluster keeps exactly one member; is it the canonical?"""
    clusters: dict[str, list[dict]] = {}
    for r in records:
        if r["cluster"]:
            clusters.setdefault(r["cluster"], []).append(r)
    bad, canonical_kept = [], 0
    for name, members in sorted(clusters.items()):
        survivors = [r["id"] for r in members if r["id"] in kept]
        canonical = next(r for r in members if r["category"] == "good")
        canonical_kept += canonical["id"] in kept
        if len(survivors) != 1:
            bad.append({"cluster": name, "members": [r["id"] for r in members], "kept": survivors})
    return {"clusters": len(clusters), "exactly_one_kept": len(clusters) - len(bad),
            "rate": round((len(clusters) - len(bad)) / len(clusters), 4),
            "canonical_kept": canonical_kept, "failures": bad[:MAX_LISTED], "num_failures": len(bad)}


def verdict(removals: dict, good: dict, pii_scores: dict, clusters: dict) -> dict:
    recall = {c: row.get("recall_counting_repairs", row["recall"]) for c, row in removals.items()}
    return {"removal_recall": {c: v >= TARGETS["removal_recall"] for c, v in recall.items()},
            "good_kept": good["rate"] >= TARGETS["good_kept"],
            "pii_masked": pii_scores["rate"] >= TARGETS["pii_masked"],
            "clusters_one_kept": clusters["rate"] >= TARGETS["clusters_one_kept"]}


def evaluate(records: list[dict], out: Path, workers: int, recipe: Path | None) -> dict:
    kept, removed, seconds = run_clean(records, out, workers, recipe)
    lost = [r["id"] for r in records if r["id"] not in kept and r["id"] not in removed]
    removals = score_removals(records, kept, removed, clean_originals(records, out, workers, recipe))
    good = score_kept(records, removed)
    pii_scores = score_pii(records, kept)
    clusters = score_clusters(records, kept)
    return {"documents": len(records), "kept": len(kept), "removed": len(removed),
            "unaccounted": lost[:MAX_LISTED], "seconds": round(seconds, 2), "workers": workers,
            "removal": removals, "good_kept": good, "pii": pii_scores, "clusters": clusters,
            "targets": TARGETS, "meets_targets": verdict(removals, good, pii_scores, clusters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--recipe", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=make_corpus.SEED)
    parser.add_argument("--out", type=Path, default=None, help="keep the cleaner's output here")
    args = parser.parse_args()
    records = make_corpus.build_corpus(args.seed)
    if args.out:
        result = evaluate(records, args.out, args.workers, args.recipe)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate(records, Path(tmp), args.workers, args.recipe)
    text = json.dumps(result, ensure_ascii=False, indent=1)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
