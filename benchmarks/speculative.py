"""Prompt-lookup speculative decoding: decode speed with drafts vs without, same run, same prompts.

Two tasks: copy-heavy (extract from / summarize / correct a text given in the prompt, RAG-like),
where drafts from the prompt are often right, and free generation (stories, explanations), where
they rarely are and the policy should keep the cost near zero. Per task and batch size (1: prompts
one at a time; 4, 8, 16: that many together — the policy must never make serving slower, so where
drafts do not pay it drafts nothing; a batch larger than the prompts repeats them): decode tok/s
(output tokens after every request's first, over the time after it) with
`--speculative none` and `ngram`, alternating (none, ngram, none, ...), medians and their ratio;
the acceptance rate (accepted / drafted tokens) and accepted tokens per draft verified; and
whether the greedy outputs were identical (they must be in batch-invariant mode, the default; with
`--batch-invariant off` a near-tie may part them, as batching can).

    python benchmarks/speculative.py [--model smollm2-135m-instruct] [--reps 2] [--max-tokens 96] \
        [--batches 1,4,8,16] [--out benchmarks/results/speculative.json]

Writes benchmarks/results/speculative.json (or --out).

`--ceiling` measures no time: it generates each task's greedy outputs once without drafts, then
replays prompt lookup over them as if every step drafted `num_draft_tokens` and verification were
free, and prints the tokens a step would yield (a plain step yields 1). Divided by a verify step's
cost relative to a plain step, that bounds what drafting can gain on these outputs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "speculative.json"

REPORT = (
    "Quarterly operations report. Revenue rose 12 percent to 4.2 million euros, driven by the Lyon and "
    "Porto offices. Staff grew from 41 to 47; two engineers joined the platform team in March. The data "
    "centre migration finished on 14 May, two weeks late, after a cooling fault in rack C7. Customer "
    "tickets fell 18 percent; median first response is now 3 hours 10 minutes. Open risks: the supplier "
    "contract with Norvik ends on 30 September, and the backup site in Ghent still lacks a second power "
    "feed. Next quarter: launch the self-service portal, renegotiate the Norvik contract, hire a security "
    "lead, and cut cloud spend by 8 percent by moving batch jobs to reserved instances."
)
MINUTES = (
    "会议纪要（6月3日）：一、预算：二季度支出为预算的百分之九十三，市场部超支十二万元。二、人事：新增两名后端工程师，"
    "七月一日入职。三、项目：客服系统上线推迟到七月十五日，原因是数据迁移测试未通过。四、待办：张伟负责与供应商确认合同，"
    "李娜负责在六月二十日前提交培训计划。"
)
COPY_TASKS = [
    f"Context:\n{REPORT}\n\nQuestion: What are the open risks? Quote the report.",
    f"Context:\n{REPORT}\n\nList every number in the report with what it measures, one per line.",
    f"Summarize the following report in three sentences, keeping its figures:\n{REPORT}",
    f"请根据以下会议纪要，逐条列出所有待办事项和负责人：\n{MINUTES}",
    f"Correct the spelling and repeat the text: {REPORT.replace('percent', 'percnet').replace('the ', 'teh ')}",
    f"Rewrite this report as a bulleted list, one bullet per sentence:\n{REPORT}",
    f"请把下面的会议纪要原文复述一遍，并在最后加一句总结：\n{MINUTES}",
    f"Context:\n{REPORT}\n\nWhen did the data centre migration finish, and why was it late? Answer with the "
    "report's words.",
]
FREE_TASKS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how vaccines train the immune system.",
    "Give me ten ideas for a birthday party for a seven-year-old.",
    "写一段关于秋天的散文。",
    "Describe the water cycle to a ten-year-old.",
    "What are the pros and cons of working from home?",
    "Invent a new board game and explain its rules.",
    "Write a poem about the sea at night.",
]


def run_batch(engine, prompt_ids: list[list[int]], params) -> dict:
    """Run requests together; decode = everything after the step that gave every request its first token."""
    ids = [engine.add_request(p, params) for p in prompt_ids]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    stats = engine.stats
    drafts, drafted, accepted = stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens
    decode_start, first = None, 0
    while engine.has_unfinished:
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
        if decode_start is None and all(tokens[i] for i in ids):
            decode_start = time.perf_counter()
            first = sum(len(t) for t in tokens.values())
    seconds = time.perf_counter() - decode_start
    total = sum(len(t) for t in tokens.values())
    return {"tokens": [tokens[i] for i in ids], "decode_tok_s": (total - first) / seconds,
            "drafts": stats.num_drafts - drafts, "drafted": stats.num_draft_tokens - drafted,
            "accepted": stats.num_accepted_tokens - accepted}


def measure(engines: dict, prompts: list[list[int]], batch: int, params, reps: int) -> dict:
    """Alternate none / ngram over `prompts` in groups of `batch`; medians of per-group decode tok/s."""
    speeds: dict[str, list[float]] = {"none": [], "ngram": []}
    drafts = drafted = accepted = differing = 0
    cycled = [prompts[i % len(prompts)] for i in range(max(len(prompts), batch))]
    for _ in range(reps):
        for start in range(0, len(cycled), batch):
            group = cycled[start : start + batch]
            results = {name: run_batch(engine, group, params) for name, engine in engines.items()}
            for name, result in results.items():
                speeds[name].append(result["decode_tok_s"])
            spec = results["ngram"]
            drafts, drafted, accepted = drafts + spec["drafts"], drafted + spec["drafted"], accepted + spec["accepted"]
            differing += sum(a != b for a, b in zip(results["none"]["tokens"], spec["tokens"], strict=True))
    none, ngram = statistics.median(speeds["none"]), statistics.median(speeds["ngram"])
    return {
        "decode_tok_s_none": round(none, 2),
        "decode_tok_s_ngram": round(ngram, 2),
        "ratio_ngram_over_none": round(ngram / none, 3),
        "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
        "accepted_tokens_per_draft": round(accepted / drafts, 2) if drafts else None,
        "draft_tokens": drafted,
        "outputs_differing": differing,
        "outputs": len(cycled) * reps,
    }


def lookup_ceiling(outputs: list[tuple[list[int], list[int]]], config) -> dict:
    """Tokens per step over (prompt, greedy output) pairs if every step verified a full draft for free."""
    from luodi.engine.speculative import NgramIndex

    tokens = steps = drafted = 0
    for prompt, output in outputs:
        index, done = NgramIndex(config.min_ngram, config.max_ngram), 0
        while done < len(output):
            draft = index.propose(prompt + output[:done], config.num_draft_tokens)
            matched = _matched(draft, output, done)
            steps, drafted, done = steps + 1, drafted + bool(draft), done + 1 + matched
        tokens += len(output)
    return {"tokens_per_step": round(tokens / steps, 3), "steps_with_a_draft": round(drafted / steps, 3),
            "num_draft_tokens": config.num_draft_tokens, "ngram": [config.min_ngram, config.max_ngram],
            **{f"tokens_per_step_best_of_{k}": best_of_candidates_ceiling(outputs, config, k)
               for k in (1, 2, 4)}}


def best_of_candidates_ceiling(outputs: list[tuple[list[int], list[int]]], config, k: int) -> float:
    """As lookup_ceiling, but each step may verify up to `k` candidate continuations at once (a tree
    of drafts) and keeps the one that matches longest: the continuations of the `k` latest earlier
    occurrences of the longest matching suffix (then of shorter ones), distinct drafts only, not
    extended periodically as NgramIndex extends them (k = 1 is the like-for-like baseline). What
    tree drafts could yield at best, before their larger verify cost."""
    tokens = steps = 0
    for prompt, output in outputs:
        done = 0
        while done < len(output):
            context = prompt + output[:done]
            drafts = _latest_continuations(context, config, k)
            best = max((_matched(draft, output, done) for draft in drafts), default=0)
            steps, done = steps + 1, done + 1 + best
        tokens += len(output)
    return round(tokens / steps, 3)


def _matched(draft: Sequence[int], output: list[int], done: int) -> int:
    """How many of the draft's tokens the output has from position `done` on."""
    matched = 0
    while matched < len(draft) and done + matched < len(output) and draft[matched] == output[done + matched]:
        matched += 1
    return matched


def _latest_continuations(context: list[int], config, k: int) -> list[tuple[int, ...]]:
    drafts: list[tuple[int, ...]] = []
    for n in range(min(config.max_ngram, len(context) - 1), config.min_ngram - 1, -1):
        suffix = context[len(context) - n :]
        for end in range(len(context) - 1, n - 1, -1):  # end: exclusive end of an earlier occurrence
            if context[end - n : end] == suffix:
                draft = tuple(context[end : end + config.num_draft_tokens])
                if draft and draft not in drafts:
                    drafts.append(draft)
                if len(drafts) == k:
                    return drafts
    return drafts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--num-prompts", type=int, default=8, help="prompts per task (at most 8)")
    parser.add_argument("--batches", default="1,4,8,16", help="batch sizes, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON report")
    parser.add_argument("--batch-invariant", choices=("on", "off"), default="on",
                        help="kernels in batch-invariant mode (the default) or not")
    parser.add_argument("--ceiling", action="store_true",
                        help="tokens per step if verification were free (no timing; see the docstring)")
    args = parser.parse_args()

    from luodi.engine.engine import EngineConfig, LLMEngine
    from luodi.engine.sampling import SamplingParams
    from luodi.engine.speculative import SpeculativeConfig
    from luodi.kernels import fused, lowbit
    from luodi.llm import LLM

    for module in (lowbit, fused):
        module.set_batch_invariant(args.batch_invariant == "on")
    batches = [int(b) for b in args.batches.split(",")]
    llm = LLM.load(args.model)
    engines = {method: LLMEngine(llm.loaded.model, llm.tokenizer,
                                 EngineConfig(max_num_seqs=max(batches),
                                              speculative=SpeculativeConfig(method=method)),
                                 eos_token_ids=llm.engine.eos_token_ids)
               for method in ("none", "ngram")}
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    tasks = {"copy": COPY_TASKS[: args.num_prompts], "free": FREE_TASKS[: args.num_prompts]}
    prompt_ids = {name: [llm.prompt_ids(p) for p in prompts] for name, prompts in tasks.items()}
    if args.ceiling:
        for name, prompts in prompt_ids.items():
            outputs = engines["none"].generate(prompts, params)
            pairs = [(p, list(o)) for p, o in zip(prompts, outputs, strict=True)]
            print(json.dumps({"task": name, **lookup_ceiling(pairs, SpeculativeConfig())}))
        return
    for engine in engines.values():  # warm: first-step allocations, kernel dispatch
        engine.generate(prompt_ids["free"][:1], SamplingParams(temperature=0, max_tokens=8))

    report: dict = {"model": args.model, "machine": platform.processor() or platform.machine(),
                    "max_tokens": args.max_tokens, "reps": args.reps, "batch_invariant": args.batch_invariant,
                    "tasks": {}}
    for name, prompts in prompt_ids.items():
        report["tasks"][name] = {}
        for batch in batches:
            result = measure(engines, prompts, batch, params, args.reps)
            report["tasks"][name][f"batch_{batch}"] = result
            print(json.dumps({"task": name, "batch": batch, **result}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
