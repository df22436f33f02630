"""Minutes of a 10,000-character Chinese transcript end to end (parse, extract, merge), on N threads.

The transcript is the Chinese evaluation transcripts' turns repeated in order until 10,000
characters; the meeting date is stated in its header. Reports wall time (median of --runs, each on a
freshly built engine so the prefix cache starts empty), the number of parts and model requests, and
the prefix-cache hit rate of the run (parts share their instruction prefix). Target: under 60 s on
2 cores. Writes benchmarks/results/apps_speed.json.

Run: PYTHONPATH=. python benchmarks/apps_speed.py [--threads 2] [--runs 3] [--part-tokens 3072]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from luodi.apps.generation import engine_generate
from luodi.apps.minutes import MAX_PART_TOKENS, write_minutes
from luodi.apps.transcript import parse_transcript, read_transcript
from luodi.llm import LLM
from luodi.models.loader import load_model

HERE = Path(__file__).parent
SOURCES = ("zh_budget.txt", "zh_product.md", "zh_support.txt")


def chinese_transcript(num_chars: int = 10_000) -> str:
    turns = [(t.speaker, t.text) for name in SOURCES for t in read_transcript(HERE / "apps_eval" / name).turns]
    lines = ["会议主题：年度规划会", "日期：2024年12月2日"]
    size, i = 0, 0
    while size < num_chars:
        speaker, text = turns[i % len(turns)]
        lines.append(f"{speaker}：{text}")
        size += len(text)
        i += 1
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part-tokens", type=int, default=MAX_PART_TOKENS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = chinese_transcript()
    loaded = load_model(args.model, device="cpu")
    runs = []
    for _ in range(args.runs):
        llm = LLM(loaded)  # a fresh engine: empty prefix cache
        run = engine_generate(llm)
        requests: list[int] = []

        def counting(prompts, params):
            requests.append(len(prompts))
            return run(prompts, params)

        start = time.perf_counter()
        transcript = parse_transcript(text)
        minutes = write_minutes(llm, transcript, generate=counting, max_part_tokens=args.part_tokens)
        runs.append({"seconds": round(time.perf_counter() - start, 2), "requests": sum(requests),
                     "action_items": len(minutes.action_items),
                     "prefix_cache_hit_rate": round(llm.engine.kv.stats.hit_rate, 3)})
    report = {"model": args.model, "threads": args.threads, "transcript_chars": len(text),
              "turns": len(parse_transcript(text).turns), "median_seconds": statistics.median(r["seconds"] for r in runs),
              "target_seconds": 60, "runs": runs}
    out = json.dumps(report, ensure_ascii=False, indent=1)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "apps_speed.json").write_text(out + "\n", encoding="utf-8")
    print(out)


if __name__ == "__main__":
    main()
