"""Minutes quality on the evaluation set in benchmarks/apps_eval/ (hand-written gold in gold.json).

An action item counts as found when owner, due date and task all match a gold item: same owner,
same ISO due, and every gold keyword in the task (case-insensitive). A decision matches when all its
keywords are in the decision's text. Reports per transcript and pooled over the short ones and the
long one: recall and precision of action items and decisions, JSON validity (against
`minutes_schema`), owners among the speakers, and whether the model's own part answers parsed.
Writes benchmarks/results/apps_eval.json.

Run: PYTHONPATH=. python benchmarks/apps_eval.py [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import jsonschema

from luodi.apps.generation import engine_generate
from luodi.apps.minutes import minutes_schema, write_minutes
from luodi.apps.transcript import read_transcript
from luodi.llm import LLM

HERE = Path(__file__).parent
DATA = HERE / "apps_eval"


def matches(item: dict, gold: dict) -> bool:
    text = item.get("task", item.get("text", "")).lower()
    return (all(k.lower() in text for k in gold["keywords"])
            and item.get("owner", gold.get("owner")) == gold.get("owner")
            and item.get("due") == gold.get("due", item.get("due")))


def score(found: list[dict], gold: list[dict]) -> dict[str, int]:
    hit_gold = sum(any(matches(f, g) for f in found) for g in gold)
    hit_found = sum(any(matches(f, g) for g in gold) for f in found)
    return {"gold": len(gold), "found": len(found), "gold_matched": hit_gold, "found_matched": hit_found}


def evaluate(llm: LLM, name: str, gold: dict) -> dict:
    meeting = date.fromisoformat(gold["meeting_date"]) if "meeting_date" in gold else None
    transcript = read_transcript(DATA / name, meeting)
    run = engine_generate(llm)
    answers: list[bool] = []

    def recording(prompts, params):
        texts = run(prompts, params)
        answers.extend(_parses(t, json.loads(p.grammar.text)) for t, p in zip(texts, params))
        return texts

    start = time.perf_counter()
    result = write_minutes(llm, transcript, generate=recording).to_dict()
    seconds = time.perf_counter() - start
    return {
        "file": name, "long": gold.get("long", False), "turns": len(transcript.turns), "seconds": round(seconds, 1),
        "json_valid": _valid(result, transcript.speakers),
        "owners_in_speakers": all(a["owner"] in transcript.speakers for a in result["action_items"]),
        "speakers_found": list(transcript.speakers) == gold["speakers"],
        "model_answers": len(answers), "model_answers_valid": sum(answers),
        "actions": score(result["action_items"], gold["action_items"]),
        "decisions": score(result["decisions"], gold["decisions"]),
    }


def _parses(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def _valid(result: dict, speakers: tuple[str, ...]) -> bool:
    try:
        jsonschema.validate(json.loads(json.dumps(result)), minutes_schema(speakers))  # as a client reads it
    except jsonschema.ValidationError:
        return False
    return True


def pooled(rows: list[dict], kind: str) -> dict[str, float]:
    total = {k: sum(r[kind][k] for r in rows) for k in ("gold", "found", "gold_matched", "found_matched")}
    return {"recall": round(total["gold_matched"] / max(total["gold"], 1), 3),
            "precision": round(total["found_matched"] / max(total["found"], 1), 3), **total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    llm = LLM.load(args.model, device="cpu")
    gold = json.loads((DATA / "gold.json").read_text(encoding="utf-8"))
    rows = [evaluate(llm, name, g) for name, g in gold.items()]
    report = {"model": args.model, "transcripts": rows}
    for label, subset in (("short", [r for r in rows if not r["long"]]), ("long", [r for r in rows if r["long"]])):
        report[label] = {"action_items": pooled(subset, "actions"), "decisions": pooled(subset, "decisions"),
                         "json_valid": all(r["json_valid"] for r in subset),
                         "owners_in_speakers": all(r["owners_in_speakers"] for r in subset)}
    report["prefix_cache_hit_rate"] = round(llm.engine.kv.stats.hit_rate, 3)
    text = json.dumps(report, ensure_ascii=False, indent=1)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "apps_eval.json").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
