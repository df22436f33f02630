"""Support bot: hand-off on unanswerable questions and citation of the gold passage on answerable ones.

A project-written knowledge base (benchmarks/support_eval/corpus.json: the help pages of a fictional
thermostat, one page per file) is ingested through the real pipeline with the default embedder;
questions.json holds answerable questions (each with its gold page) and unanswerable ones (off
topic, or about things the pages do not say). Targets: hand-off on >= 0.9 of the unanswerable;
answers that cite the gold page on >= 0.8 of the answerable (cited: the model's [n], or the
best-retrieved page when it wrote none — see luodi.apps.support). Also reported: wrong hand-offs
on answerable questions, the best cosine per question, and the threshold in use.

    python benchmarks/support_eval.py [--model smollm2-135m-instruct] [--no-model] [--min-score 0.835]

Writes benchmarks/results/support_eval.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "support_eval.json"
KB, OWNER = "support-eval", "local"


def build_kb(workdir: Path):
    from luodi.kb.embedding import get_embedder
    from luodi.kb.ingest.pipeline import Ingestor, collect_files
    from luodi.kb.store.sqlite import SqliteStore

    docs = workdir / "docs"
    docs.mkdir()
    for name, text in json.loads((HERE / "support_eval" / "corpus.json").read_text()).items():
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
    return {
        "answerable": len(answerable), "unanswerable": len(unanswerable),
        "gold_cited_rate": round(sum(a["cites_gold"] for a in answerable) / len(answerable), 3),
        "handoff_rate_unanswerable": round(sum(u["handoff"] for u in unanswerable) / len(unanswerable), 3),
        "wrong_handoff_rate_answerable": round(sum(a["handoff"] for a in answerable) / len(answerable), 3),
        "model_cited_rate": round(sum("[" in a["answer"] for a in answerable) / len(answerable), 3),
        "details": {"answerable": answerable, "unanswerable": unanswerable},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--no-model", action="store_true", help="retrieval and hand-off only (answers not generated)")
    parser.add_argument("--min-score", type=float, default=None)
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (the citation comes early)")
    args = parser.parse_args()
    from luodi.apps.support import SupportBot, SupportConfig
    from luodi.llm import LLM

    questions = json.loads((HERE / "support_eval" / "questions.json").read_text())
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
    print(json.dumps({k: v for k, v in result.items() if k != "details"}))
    print(json.dumps([(a["best_score"], a["q"][:30]) for a in result["details"]["answerable"]]))
    print(json.dumps([(u["best_score"], u["q"][:30]) for u in result["details"]["unanswerable"]]))


if __name__ == "__main__":
    main()
