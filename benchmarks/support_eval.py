"""Support bot: hand-off on unanswerable questions and citation of the gold passage on answerable ones.

A project-written knowledge base (benchmarks/support_eval/corpus.json: the help pages of a fictional
thermostat, one page per file, English and Chinese) is ingested through the real pipeline with the default embedder;
questions.json holds answerable questions (each with its gold page) and unanswerable ones (off
topic, or about things the pages do not say). Targets: hand-off on >= 0.9 of the unanswerable;
answers that cite the gold page on >= 0.8 of the answerable (cited: the model's [n], or the
best-retrieved page when it wrote none — see luodi.apps.support). Also reported: wrong hand-offs
on answerable questions, the best cosine per question, and every rate per question language.

    python benchmarks/support_eval.py [--model smollm2-135m-instruct] [--no-model] [--min-score X]

Writes benchmarks/results/support_eval.json (with a model).

The threshold is not chosen on this set. `--tune` runs retrieval alone over a second, separate
set (benchmarks/support_tune/: the help pages of a fictional smart lock, English and Chinese, with
its own answerable and unanswerable questions), picks the threshold from those best cosines with
`luodi.apps.support.pick_min_score` for each question language (English, Chinese), prints them with
the tuning-set rates, and writes benchmarks/results/support_tune.json; `DEFAULT_MIN_SCORES` is set
from it, so the figures above are held out.

    python benchmarks/support_eval.py --tune
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "support_eval.json"
TUNE_RESULTS = HERE / "results" / "support_tune.json"
EVAL_SET, TUNE_SET = HERE / "support_eval", HERE / "support_tune"
KB, OWNER = "support-eval", "local"


def build_kb(workdir: Path, data: Path = EVAL_SET):
    from luodi.kb.embedding import get_embedder
    from luodi.kb.ingest.pipeline import Ingestor, collect_files
    from luodi.kb.store.sqlite import SqliteStore

    docs = workdir / "docs"
    docs.mkdir()
    for name, text in json.loads((data / "corpus.json").read_text()).items():
        (docs / name).write_text(text + "\n")
    embedder = get_embedder()
    store = SqliteStore(workdir / "store")
    store.create(KB, owner=OWNER, embedder=embedder.name, dim=embedder.dim)
    Ingestor(store, embedder, KB, OWNER).add(collect_files([docs]))
    return store, embedder


def evaluate(bot_factory, questions: dict, params=None) -> dict:
    answerable, unanswerable = [], []
    for question, gold in questions["answerable"]:
        reply = bot_factory().ask(question, params)
        cited = [Path(s.hit.source).name for s in reply.sources if s.cited]
        answerable.append({"q": question, "gold": gold, "handoff": reply.handoff, "cites_gold": gold in cited,
                           "best_score": round(reply.best_score, 4), "answer": reply.answer})
    for question in questions["unanswerable"]:
        reply = bot_factory().ask(question)
        unanswerable.append({"q": question, "handoff": reply.handoff, "best_score": round(reply.best_score, 4)})
    from luodi.apps.support import query_language

    by_language = {lang: rates([a for a in answerable if query_language(a["q"]) == lang],
                               [u for u in unanswerable if query_language(u["q"]) == lang])
                   for lang in sorted({query_language(q["q"]) for q in answerable + unanswerable})}
    return {**rates(answerable, unanswerable), "by_language": by_language,
            "details": {"answerable": answerable, "unanswerable": unanswerable}}


def rates(answerable: list[dict], unanswerable: list[dict]) -> dict:
    share = lambda hits, items: round(sum(hits) / len(items), 3) if items else None  # noqa: E731
    return {
        "answerable": len(answerable), "unanswerable": len(unanswerable),
        "gold_cited_rate": share((a["cites_gold"] for a in answerable), answerable),
        "handoff_rate_unanswerable": share((u["handoff"] for u in unanswerable), unanswerable),
        "wrong_handoff_rate_answerable": share((a["handoff"] for a in answerable), answerable),
        "model_cited_rate": share(("[" in a["answer"] for a in answerable), answerable),
    }


def tune() -> dict:
    """The threshold picked from the tuning set's best cosines (retrieval only, no model)."""
    from luodi.apps.support import SupportBot, SupportConfig, pick_min_score, query_language

    questions = json.loads((TUNE_SET / "questions.json").read_text())
    config = SupportConfig(min_score=-1.0)  # nothing handed off: every question reports its best cosine
    with tempfile.TemporaryDirectory() as tmp:
        store, embedder = build_kb(Path(tmp), TUNE_SET)
        scored = evaluate(lambda: SupportBot(None, store, embedder, KB, OWNER, config), questions)
        store.close()
    answerable = [{k: a[k] for k in ("q", "gold", "best_score", "cites_gold")}
                  for a in scored["details"]["answerable"]]
    unanswerable = [{k: u[k] for k in ("q", "best_score")} for u in scored["details"]["unanswerable"]]
    overall = pick_min_score([a["best_score"] for a in answerable], [u["best_score"] for u in unanswerable])
    per_language = {}
    for lang in ("en", "zh"):
        choice = pick_min_score([a["best_score"] for a in answerable if query_language(a["q"]) == lang],
                                [u["best_score"] for u in unanswerable if query_language(u["q"]) == lang])
        per_language[lang] = choice_summary(choice)
    handoff = [u["best_score"] < per_language[query_language(u["q"])]["min_score"] for u in unanswerable]
    wrong = [a["best_score"] < per_language[query_language(a["q"])]["min_score"] for a in answerable]
    return {"benchmark": "support_tune", "rule": "max balanced accuracy, midpoint of the widest tied gap, "
                                                 "per question language",
            "answerable": len(answerable), "unanswerable": len(unanswerable),
            "per_language": per_language,
            "handoff_rate_unanswerable": round(sum(handoff) / len(handoff), 3),
            "wrong_handoff_rate_answerable": round(sum(wrong) / len(wrong), 3),
            "one_threshold_for_all": choice_summary(overall),
            "top1_is_gold_rate": scored["gold_cited_rate"],  # the best-fused passage is the gold page
            "details": {"answerable": answerable, "unanswerable": unanswerable}}


def choice_summary(choice) -> dict:
    return {"min_score": round(choice.min_score, 4), "margin": round(choice.margin, 4),
            "balanced_accuracy": round(choice.balanced_accuracy, 3),
            "handoff_rate_unanswerable": round(choice.handoff_rate, 3),
            "wrong_handoff_rate_answerable": round(1 - choice.answer_rate, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--no-model", action="store_true", help="retrieval and hand-off only (answers not generated)")
    parser.add_argument("--min-score", type=float, default=None)
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (the citation comes early)")
    parser.add_argument("--tune", action="store_true", help="pick the threshold on the tuning set (no model)")
    args = parser.parse_args()
    if args.tune:
        result = tune()
        TUNE_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        TUNE_RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "details"}))
        print_scores(result)
        return
    from luodi.apps.support import SupportBot, SupportConfig
    from luodi.llm import LLM

    questions = json.loads((EVAL_SET / "questions.json").read_text())
    llm = None if args.no_model else LLM.load(args.model)
    config = SupportConfig() if args.min_score is None else SupportConfig(min_score=args.min_score)
    with tempfile.TemporaryDirectory() as tmp:
        store, embedder = build_kb(Path(tmp))
        from luodi.engine.sampling import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, repetition_penalty=1.1)
        result = evaluate(lambda: SupportBot(llm, store, embedder, KB, OWNER, config), questions, params)
        store.close()
    result = {"benchmark": "support_eval", "model": None if llm is None else args.model,
              "max_tokens": args.max_tokens,
              "min_score": config.min_score, "targets": {"handoff_rate_unanswerable": 0.9, "gold_cited_rate": 0.8},
              **result}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if llm is not None:
        RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, ensure_ascii=False))
    print_scores(result)


def print_scores(result: dict) -> None:
    for kind in ("answerable", "unanswerable"):
        scores = [(q["best_score"], q["q"][:30]) for q in result["details"][kind]]
        print(json.dumps(scores, ensure_ascii=False))


if __name__ == "__main__":
    main()
