"""What batch-invariant mode costs: off vs on in one process, alternating (A B A B ...), SmolLM2 bf16.

    python benchmarks/batch_invariance.py [--threads 1] [--reps 4]

Prompt processing (pp512) and batch-1 decode (tg64) tok/s; medians and the on/off ratio. Writes
benchmarks/results/batch_invariance.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_speed  # noqa: E402
import torch  # noqa: E402

from luodi.engine.engine import EngineConfig, LLMEngine  # noqa: E402
from luodi.engine.sampling import SamplingParams  # noqa: E402
from luodi.kernels import fused, lowbit  # noqa: E402
from luodi.loading.catalog import pull  # noqa: E402
from luodi.models.loader import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "batch_invariance.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(str(pull("smollm2-135m-instruct", progress=False)), device="cpu", dtype="bfloat16")
    engine = LLMEngine(loaded.model, config=EngineConfig(max_num_batched_tokens=512, enable_prefix_caching=False))
    vocab = loaded.config.vocab_size

    def run(batch: list[list[int]], max_tokens: int) -> list[tuple[int, int, float]]:
        for p in batch:
            engine.add_request(p, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        engine.stats.history.clear()
        while engine.has_unfinished:
            engine.step()
        return list(engine.stats.history)

    run(engine_speed.prompts(vocab, 32), 8)  # warm-up
    samples: dict[bool, dict[str, list[float]]] = {on: {"pp512": [], "tg64": []} for on in (False, True)}
    for rep in range(args.reps):
        for on in (False, True):
            lowbit.set_batch_invariant(on)
            fused.set_batch_invariant(on)
            history = run(engine_speed.prompts(vocab, 512), 1)
            samples[on]["pp512"].append(512 / sum(s for p, _, s in history if p))
            history = run(engine_speed.prompts(vocab, 16), 65)
            samples[on]["tg64"].append(64 / sum(s for p, _, s in history if not p))
            print(json.dumps({"rep": rep, "invariant": on, **{k: v[-1] for k, v in samples[on].items()}}), flush=True)
    medians = {("on" if on else "off"): {k: round(statistics.median(v), 2) for k, v in r.items()}
               for on, r in samples.items()}
    report = {"threads": args.threads, "reps": args.reps, "median_tok_s": medians,
              "ratio_on_off": {k: round(medians["on"][k] / medians["off"][k], 3) for k in ("pp512", "tg64")}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
