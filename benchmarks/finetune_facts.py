"""Does `luodi finetune` with its defaults teach a small fact set? Held-out answers per seed, wall time.

The fact set is tests/finetune/facts.py (twelve invented facts, four training phrasings each, two
held-out questions each, English and Chinese). Per seed: `finetune()` with defaults only (no rank,
lr or epochs given, no --eval file), then the held-out questions answered greedily by the base
model with the adapter (fp32, through Luodi's engine), the fraction whose answer holds the fact,
the training report's figures (plan, steps, best epoch, probe, general-text perplexity) and the
wall time of the whole `finetune()` call.

    python benchmarks/finetune_facts.py [--seeds 0 1 2] [--threads 2] [--replay W] [--patience P] [--epochs E] [--rank R]

`--replay`, `--patience`, `--epochs` and `--rank` override those defaults (to compare them side by side).

Writes benchmarks/results/finetune_facts.json. Needs the `finetune` and `test` extras.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "finetune_facts.json"
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "finetune")]


def answer_heldout(model_path: str, adapter: Path | None) -> list[str]:
    import torch
    from facts import heldout_questions

    from luodi.engine.sampling import SamplingParams
    from luodi.finetune.lora import load_adapter, load_for_training
    from luodi.llm import LLM
    from luodi.models.loader import LoadedModel

    loaded = load_for_training(model_path, device="cpu", dtype="float32")
    model = load_adapter(loaded.model, adapter) if adapter else loaded.model
    llm = LLM(LoadedModel(model, loaded.tokenizer, loaded.config, loaded.path, "facts"))
    params = SamplingParams(temperature=0, max_tokens=32)
    with torch.no_grad():
        return [llm.complete(llm.prompt_ids(q), params).text for q, _ in heldout_questions()]


def run_seed(model_path: str, seed: int, root: Path, overrides: dict) -> dict:
    from facts import contains_answer, heldout_questions, write_training_file

    from luodi import finetune

    data = write_training_file(root / "train.jsonl")
    start = time.perf_counter()
    result = finetune(model_path, data, out=root / f"adapter-{seed}", seed=seed, device="cpu", report=print,
                      **overrides)
    wall = time.perf_counter() - start
    answers = answer_heldout(model_path, result.adapter_dir)
    found = [contains_answer(a, fact) for a, (_, fact) in zip(answers, heldout_questions(), strict=True)]
    report = json.loads((result.adapter_dir / "report.json").read_text())
    print(f"seed {seed}: {sum(found)}/{len(found)} held-out questions answered, {wall:.0f} s")
    return {"seed": seed, "answered": sum(found), "num_questions": len(found),
            "answered_fraction": sum(found) / len(found), "finetune_wall_s": round(wall, 1),
            "misses": [a for a, ok in zip(answers, found, strict=True) if not ok], "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replay", type=float, help="general-text replay weight (default: the plan's)")
    parser.add_argument("--patience", type=int, help="early-stopping patience (default: the plan's)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the plan's)")
    parser.add_argument("--rank", type=int, help="LoRA rank (default: the plan's)")
    parser.add_argument("--base", action="store_true", help="also answer with the base model (expect 0)")
    args = parser.parse_args()
    import torch
    from model_cache import pulled_model_path

    torch.set_num_threads(args.threads)
    model_path = str(pulled_model_path("smollm2-135m-instruct"))
    overrides = {k: v for k, v in (("replay", args.replay), ("patience", args.patience), ("epochs", args.epochs),
                                   ("rank", args.rank)) if v is not None}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs.append(run_seed(model_path, seed, Path(tmp), overrides))
    record = {"model": "smollm2-135m-instruct", "threads": args.threads, "machine": platform.processor() or
              platform.machine(), "torch": torch.__version__, "overrides": overrides, "runs": runs}
    if args.base:
        from facts import contains_answer, heldout_questions

        base = answer_heldout(model_path, None)
        record["base_answered"] = sum(contains_answer(a, f) for a, (_, f) in zip(base, heldout_questions(),
                                                                                  strict=True))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for run in runs:
        print(f"seed {run['seed']}: {run['answered']}/{run['num_questions']} in {run['finetune_wall_s']} s")


if __name__ == "__main__":
    main()
