"""Speed of the corpus LLM steps: LLM scoring prefill tokens/s on SmolLM2 (batched against one
document per forward pass, alternating A B A B), the distilled classifier's documents/s, and the
share of documents the LLM must see in a `--llm-filter` run (the distillation sample plus the
fine filter's survivors).

    PYTHONPATH=. python benchmarks/corpus_llm_speed.py [--docs 48] [--repeats 3]

Prints JSON and writes benchmarks/results/corpus_llm_speed.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "corpus")]

from corpus_files import prose, write_jsonl  # noqa: E402
from model_cache import pulled_model_path  # noqa: E402

from luodi.corpus import clean  # noqa: E402
from luodi.corpus.llm_score import BpcScorer  # noqa: E402
from luodi.corpus.quality import fit_classifier  # noqa: E402
from luodi.corpus.recipe import default_recipe_text  # noqa: E402

MODEL = "smollm2-135m-instruct"


def documents(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [("en" if i % 2 else "zh", prose(rng, "en" if i % 2 else "zh", rng.randrange(4, 7))) for i in range(n)]


def tokens_per_s(scorer: BpcScorer, texts: list[str]) -> float:
    start = time.perf_counter()
    scores = scorer.score(texts)
    return sum(s.num_tokens + 1 for s in scores) / (time.perf_counter() - start)  # +1: the unscored first token


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    docs = documents(args.docs)
    texts = [t for _, t in docs]
    path = str(pulled_model_path(MODEL))
    batched = BpcScorer.load(path, max_tokens=256, batch_tokens=2048)
    single = BpcScorer(batched.model, batched.tokenizer, max_tokens=256, batch_tokens=256)  # one doc per pass
    tokens_per_s(batched, texts[:4])  # warm-up
    runs: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    for _ in range(args.repeats):  # A B A B
        runs["batched"].append(tokens_per_s(batched, texts))
        runs["one_by_one"].append(tokens_per_s(single, texts))
    teacher = [s.bits_per_char for s in batched.score(texts)]
    classifier = fit_classifier(texts, [lang for lang, _ in docs], teacher, num_buckets=2**18)
    start = time.perf_counter()
    for _ in range(5):
        for language, text in docs:
            classifier.predict_bpc(text, language)
    classifier_docs_s = 5 * len(docs) / (time.perf_counter() - start)
    result = {
        "model": MODEL, "dtype": str(next(batched.model.parameters()).dtype), "num_docs": len(docs),
        "prefill_tok_s_batched": round(statistics.median(runs["batched"]), 1),
        "prefill_tok_s_one_by_one": round(statistics.median(runs["one_by_one"]), 1),
        "batched_over_one_by_one": round(statistics.median(runs["batched"]) / statistics.median(runs["one_by_one"]), 3),
        "classifier_docs_s": round(classifier_docs_s, 1),
        "llm_share": llm_share(path, args.docs),
    }
    print(json.dumps(result, indent=2))
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "corpus_llm_speed.json").write_text(json.dumps(result, indent=2) + "\n")


def llm_share(model: str, num_docs: int) -> dict[str, float | int]:
    """A `--llm-filter` run on a synthetic corpus: documents the LLM scores over documents read."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_jsonl(folder / "in.jsonl", [{"id": f"d{i}", "text": t} for i, (_, t) in
                                                   enumerate(documents(num_docs, seed=1))])
        sample = max(8, num_docs // 4)
        recipe = folder / "r.yaml"
        recipe.write_text(default_recipe_text().replace("sample_size: 2000", f"sample_size: {sample}"))
        report = clean([source], folder / "out", recipe=recipe, llm_filter=model)
        stages = {s.name: s for s in report.stages}
        trained = json.loads((folder / "out" / "quality_classifier.json").read_text())["info"]["num_documents"]
        fine = stages["llm_filter"].docs_in
        return {"num_read": report.num_read, "distillation_sample": trained, "fine_filter_docs": fine,
                "share": round((trained + fine) / report.num_read, 3)}


if __name__ == "__main__":
    main()
