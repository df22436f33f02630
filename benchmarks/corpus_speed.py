"""Corpus-cleaning speed and memory: Luodi's rule filters and MinHash dedup beside datatrove's.

The corpus (100k documents by default) is made with the evaluation set's generator
(benchmarks/corpus_eval/make_corpus.py): the same banks and the same category mix, fresh
documents, plus near copies (10%: a few edits, 5-gram Jaccard 0.8-0.97) and exact copies (5%) of
earlier ones so near dedup has work. It is written once to JSONL and streamed by every run.

Each measurement is a child process on one worker (so docs/s is per core) that streams the file,
runs one engine's stage, and reports documents and seconds; its peak RSS comes from the kernel
(`os.wait4`, the per-child form of `getrusage(RUSAGE_CHILDREN)`). Engines alternate
(Luodi, datatrove, Luodi, datatrove...) and the median is reported, with the ratio
Luodi ÷ datatrove (>= 1.0 means Luodi is at least as fast).

Equal settings:
- rules: Luodi's default `length`, `gopher_quality`, `gopher_repetition` and `c4_lines` steps
  against datatrove's `GopherQualityFilter` (its word-count bounds are Luodi's `length`),
  `GopherRepetitionFilter` and `C4QualityFilter`, each at its default thresholds; both are given
  the document's language (Luodi in the document's stats, datatrove by one filter set per
  language), so language ID is not timed.
- MinHash: 5-grams, SHA-1 32-bit hashing, and the bands x rows Luodi's LSH picks for its
  candidate threshold and permutations (datasketch's optimum: 21 x 6 for 0.55 and 128) given to
  datatrove as num_buckets x hashes_per_bucket (Luodi then confirms each candidate pair by its
  MinHash estimate, datatrove takes every bucket match); datatrove's four stages (signatures,
  buckets, clusters, filter) are timed together, on disk in a temporary folder. Units differ by
  design: Luodi shingles Chinese by character, datatrove by jieba word.

    python benchmarks/corpus_speed.py [--docs 100000] [--repeats 3] [--memory-1m]

LLM quality scoring (SmolLM2 prefill tokens/s, the share of documents it sees) is measured by
benchmarks/corpus_llm_speed.py.

Prints JSON and writes benchmarks/results/corpus_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "corpus_eval"))

import make_corpus  # noqa: E402

RESULTS = ROOT / "results" / "corpus_speed.json"
CACHE = ROOT.parent / ".cache" / "corpus_speed"
RULE_STEPS = ("length", "gopher_quality", "gopher_repetition", "c4_lines")
NEAR_SHARE, EXACT_SHARE = 0.10, 0.05
STAGES = ("rules", "minhash")
ENGINES = ("luodi", "datatrove")


# -- the corpus ---------------------------------------------------------------------------------------


def fresh_document(rng: random.Random, kind: dict) -> tuple[str, list | None]:
    """A new document of the category and language of an evaluation record."""
    category, language = kind["category"], kind["language"]
    if category == "good":
        return make_corpus.random_good(rng, language), None
    if category == "pii":
        return make_corpus.pii_document(rng, language)[0], None
    if category == "other_language":
        return make_corpus.other_language_document(rng, language), None
    made = make_corpus.MAKERS[category](rng, language)
    return (made[0] if isinstance(made, tuple) else made), None


def speed_corpus(num_docs: int, seed: int) -> Path:
    """The benchmark corpus as JSONL (cached by size and seed): {"id", "text", "language"}."""
    path = CACHE / f"corpus_{num_docs}_{seed}.jsonl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    kinds = [r for r in make_corpus.build_corpus(seed) if not r["cluster"] or r["category"] == "good"]
    recent: list[dict] = []  # good documents that may be copied
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(num_docs):
            roll = rng.random()
            if recent and roll < NEAR_SHARE + EXACT_SHARE:
                source = rng.choice(recent)
                text = source["text"] if roll < EXACT_SHARE else \
                    make_corpus.near_duplicate(rng, source["text"], source["language"])
                language = source["language"]
            else:
                kind = rng.choice(kinds)
                text, _ = fresh_document(rng, kind)
                language = kind["language"]
                if kind["category"] == "good":
                    recent = (recent + [{"text": text, "language": language}])[-500:]
            f.write(json.dumps({"id": f"s{i:07d}", "text": text, "language": language},
                               ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def stream(path: Path, passes: int = 1) -> Iterator[dict]:
    """The corpus's records, `passes` times over (later passes with distinct ids)."""
    for p in range(passes):
        with path.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if p:
                    record["id"] = f"{record['id']}-{p}"
                yield record


# -- one measurement (a child process) ------------------------------------------------------------------


def luodi_rules(path: Path, passes: int) -> int:
    from luodi.corpus.document import Document
    from luodi.corpus.pipeline import Tallies, run_documents
    from luodi.corpus.recipe import load_recipe

    steps = [s for s in load_recipe(None).build_document_steps() if s.name in RULE_STEPS]
    docs = (Document(r["id"], r["text"], stats={"language": {"language": r["language"], "score": 1.0}})
            for r in stream(path, passes))
    outcomes = run_documents(docs, steps, Tallies([s.name for s in steps]))
    return sum(1 for o in outcomes if isinstance(o, Document))


def datatrove_rules(path: Path, passes: int) -> int:
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    chains = {lang: [GopherQualityFilter(language=lang), GopherRepetitionFilter(language=lang),
                     C4QualityFilter(language=lang)] for lang in ("zh", "en")}
    kept = 0
    for language, chain in chains.items():  # one pass per language: a filter set is per language
        docs: Iterator = (Document(text=r["text"], id=r["id"]) for r in stream(path, passes)
                          if (r["language"] == "zh") == (language == "zh"))
        for step in chain:
            docs = step.run(docs, 0, 1)
        kept += sum(1 for _ in docs)
    return kept


def luodi_minhash(path: Path, passes: int) -> int:
    from luodi.corpus.dedup import NearDedup
    from luodi.corpus.document import Document

    dedup = NearDedup()
    kept = 0
    for r in stream(path, passes):
        key = dedup.key(Document(r["id"], r["text"]))
        kept += dedup.decide(r["id"], key) is None
    return kept


def datatrove_minhash(path: Path, passes: int, bands: int, rows: int) -> int:
    from datatrove.data import Document
    from datatrove.pipeline.dedup import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.utils.hashing import HashConfig

    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                           hash_config=HashConfig(precision=32, hash_fc="sha1"))
    ranks = {"zh": 0, "en": 1}  # one signature task per language: datatrove tokenizes per language

    def docs(rank: int) -> Iterator:
        return (Document(text=r["text"], id=r["id"]) for r in stream(path, passes)
                if ranks.get(r["language"], 1) == rank)

    with tempfile.TemporaryDirectory() as tmp:
        for language, rank in ranks.items():
            signer = MinhashDedupSignature(f"{tmp}/sigs", config=config, language=language)
            signer.run(docs(rank), rank, len(ranks))
        for bucket in range(bands):
            MinhashDedupBuckets(f"{tmp}/sigs", f"{tmp}/buckets", config=config).run(None, bucket, bands)
        MinhashDedupCluster(f"{tmp}/buckets", f"{tmp}/remove", config=config).run(None, 0, 1)
        return sum(sum(1 for _ in MinhashDedupFilter(f"{tmp}/remove").run(docs(rank), rank, len(ranks)))
                   for rank in ranks.values())


def lsh_shape() -> dict:
    """Bands x rows and permutations of Luodi's near dedup at its defaults."""
    from datasketch import MinHashLSH

    from luodi.corpus.dedup import NearDedup

    dedup = NearDedup()
    lsh = MinHashLSH(threshold=dedup.lsh_threshold, num_perm=dedup.num_perm)
    return {"ngram": dedup.ngram, "num_perm": dedup.num_perm, "threshold": dedup.threshold,
            "lsh_threshold": dedup.lsh_threshold, "min_estimate": round(dedup.min_estimate, 3),
            "bands": lsh.b, "rows": lsh.r}


def child(args: argparse.Namespace) -> None:
    import logging

    from loguru import logger

    logger.remove()  # datatrove logs every stage at INFO
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    if args.child == "luodi-rules":
        kept = luodi_rules(args.input, args.passes)
    elif args.child == "datatrove-rules":
        kept = datatrove_rules(args.input, args.passes)
    elif args.child == "luodi-minhash":
        kept = luodi_minhash(args.input, args.passes)
    else:
        kept = datatrove_minhash(args.input, args.passes, args.bands, args.rows)
    print(json.dumps({"kept": kept, "seconds": time.perf_counter() - start}))


# -- the parent: alternate, collect, report -----------------------------------------------------------


def measure(task: str, path: Path, passes: int, shape: dict) -> dict:
    """Runs one child; its output and peak RSS (MiB)."""
    cmd = [sys.executable, __file__, "--child", task, "--input", str(path), "--passes", str(passes),
           "--bands", str(shape["bands"]), "--rows", str(shape["rows"])]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode:
        return {"error": stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    return {**json.loads(text.strip().splitlines()[-1]), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def compare(path: Path, num_docs: int, repeats: int, shape: dict) -> dict:
    out = {}
    for stage in STAGES:
        runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
        for _ in range(repeats):
            for engine in ENGINES:
                runs[engine].append(measure(f"{engine}-{stage}", path, 1, shape))
        out[stage] = summarize(runs, num_docs)
    return out


def summarize(runs: dict[str, list[dict]], num_docs: int) -> dict:
    row: dict = {}
    for engine, results in runs.items():
        good = [r for r in results if "seconds" in r]
        if not good:
            row[engine] = {"error": results[0].get("error")}
            continue
        seconds = statistics.median(r["seconds"] for r in good)
        row[engine] = {"docs_per_s_per_core": round(num_docs / seconds, 1), "median_seconds": round(seconds, 2),
                       "runs_seconds": [round(r["seconds"], 2) for r in good], "kept": good[0]["kept"],
                       "peak_rss_mib": max(r["peak_rss_mib"] for r in good)}
    if all("docs_per_s_per_core" in row[e] for e in ENGINES):
        row["ratio_luodi_over_datatrove"] = round(
            row["luodi"]["docs_per_s_per_core"] / row["datatrove"]["docs_per_s_per_core"], 3)
    return row


def memory_growth(path: Path, num_docs: int, shape: dict) -> dict:
    """Luodi's peak RSS over ten passes of the corpus (10x the documents) beside one pass (the
    speed rows). Luodi only: the claim is that its memory does not grow with the corpus beyond the
    LSH index; ten passes of datatrove's rules would take hours. Later passes repeat the texts under
    new ids, so near dedup drops them and its index keeps the first pass's keys: the figure bounds
    the per-document working memory, not the index's growth with new text."""
    out = {}
    for stage in STAGES:
        large = measure(f"luodi-{stage}", path, 10, shape)
        out[f"luodi-{stage}"] = {f"peak_rss_mib_{10 * num_docs}": large.get("peak_rss_mib"),
                                 "seconds": round(large.get("seconds", float("nan")), 1),
                                 "errors": large.get("error", [])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=make_corpus.SEED)
    parser.add_argument("--memory-1m", action="store_true",
                        help="also the peak RSS over ten passes of the corpus (1M documents at --docs 100000)")
    parser.add_argument("--child", choices=[f"{e}-{s}" for e in ENGINES for s in STAGES], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--passes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--bands", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    start = time.perf_counter()
    path = speed_corpus(args.docs, args.seed)
    shape = lsh_shape()
    result = {"documents": args.docs, "corpus": str(path.relative_to(ROOT.parent)),
              "corpus_build_seconds": round(time.perf_counter() - start, 1), "repeats": repeats_note(args),
              "settings": {**shape, "hash": "sha1, 32-bit", "rule_steps": list(RULE_STEPS)},
              "workers": 1, "cpu_count": os.cpu_count()}
    result.update(compare(path, args.docs, args.repeats, shape))
    if args.memory_1m:
        result["memory"] = memory_growth(path, args.docs, shape)
    text = json.dumps(result, indent=1)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n", encoding="utf-8")


def repeats_note(args: argparse.Namespace) -> str:
    return f"{args.repeats} per engine and stage, alternating; medians reported"


if __name__ == "__main__":
    main()
