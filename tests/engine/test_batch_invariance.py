"""Batch invariance on the real SmolLM2: a request's logits do not depend on its batch.

Oracle: the same request run alone, one step at a time, in a fresh engine. Its logits at every
sampled step must equal, bit for bit, its logits when it shares steps with other requests — decode
rows beside prompt chunks of other requests, several requests arriving while it decodes — under
token budgets from 16 to 512 (which also chunk its own prompt differently), for bf16 weights and
the INT8, INT4 and W8A8 kernels, with the native layer stack and with the Python path that calls
the same kernels layer by layer. Seeded sampled requests must draw the same tokens alone and
batched (each request's own generator).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.engine.speculative import SpeculativeConfig
from luodi.models import native_stack
from luodi.models.loader import load_model
from luodi.quant_tools.quantize import QuantizeOptions, quantize_model_dir
from model_cache import pulled_model_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("batch_invariant_kernels")]

TARGET = "The key idea behind paged attention is that the cache of each sequence"
OTHERS = [  # prompts of the requests that share the target's steps (lengths 6 to ~120 tokens)
    "Hello there!",
    "请用三句话介绍一下长城的历史和它在今天的意义。",
    "Write a haiku about the sea. " * 3,
    "List five fruits, then five vegetables, then five cereals, one per line, with a short note on "
    "each about its taste, colour and where it grows best, and which season it is eaten in most.",
    "Translate to French: the quick brown fox jumps over the lazy dog. " * 6,
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n# explain this code",
    "Summarize: " + "The committee met on Monday to review the budget and the schedule. " * 8,
    "1, 2, 3, 4, 5, 6, 7, 8,",
]
NUM_TOKENS = 12
VARIANTS = {  # quantize options; None: the bf16 model as loaded
    "bf16": None,
    "int8": QuantizeOptions("int8"),
    "int4": QuantizeOptions("int4", method="rtn", group_size=32),
    "w8a8": QuantizeOptions("w8a8", alpha=0.5, calib_seq_len=64, calib_max_seqs=2),
}
SEEDED = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=NUM_TOKENS)
GREEDY = SamplingParams(temperature=0, max_tokens=NUM_TOKENS)


@pytest.fixture(scope="module", params=list(VARIANTS))
def loaded(request, tmp_path_factory):
    source = pulled_model_path("smollm2-135m-instruct")
    options = VARIANTS[request.param]
    path: Path = source
    if options is not None:
        path = tmp_path_factory.mktemp(f"smollm2-{request.param}")
        quantize_model_dir(str(source), options, path)
    return load_model(str(path), device="cpu", dtype="bfloat16")


@pytest.fixture(params=["native", "python"])
def stack_path(request, loaded, monkeypatch):
    if request.param == "native":
        assert loaded.model.model.native_stack is not None, "the native stack should run this model"
    else:
        monkeypatch.setattr(native_stack, "_disabled", True)
    return request.param


def _recording_engine(model, budget: int) -> tuple[LLMEngine, dict[str, list[torch.Tensor]]]:
    """An engine whose sampled logits rows are kept, per request id, in step order (speculation off:
    one sampled row per request and step; tests/engine/test_speculative_models.py covers it)."""
    engine = LLMEngine(model, config=EngineConfig(max_num_batched_tokens=budget, max_model_len=512,
                                                  speculative=SpeculativeConfig(method="none")))
    seen: dict[str, list[torch.Tensor]] = {}
    sample = engine.runner._sample

    def recording(logits, sampled, *rest):
        for row, s in zip(logits, sampled, strict=True):
            seen.setdefault(s.request.request_id, []).append(row.clone())
        return sample(logits, sampled, *rest)

    engine.runner._sample = recording
    return engine, seen


def _alone(model, prompt: list[int], params: SamplingParams) -> tuple[list[int], list[torch.Tensor]]:
    engine, seen = _recording_engine(model, budget=512)
    [tokens] = engine.generate([prompt], params)
    return tokens, seen["req-0"]


def _batched(model, tokenizer, prompt: list[int], params: SamplingParams, budget: int, num_others: int):
    """The target among `num_others` requests: half start with it, the rest arrive while it decodes."""
    engine, seen = _recording_engine(model, budget)
    others = [tokenizer.encode(OTHERS[i % len(OTHERS)]) for i in range(num_others)]
    early, late = others[: num_others // 2], others[num_others // 2 :]
    other_params = SamplingParams(temperature=0.7, seed=7, max_tokens=NUM_TOKENS + 4)
    for ids in early:
        engine.add_request(ids, other_params)
    target = engine.add_request(prompt, params, request_id="target")
    tokens: list[int] = []
    step = 0
    while engine.has_unfinished:
        if late and step % 2 == 1:
            engine.add_request(late.pop(), other_params)  # prompt chunks beside the target's decode rows
        for out in engine.step():
            if out.request_id == target:
                tokens.extend(out.new_token_ids)
        step += 1
    return tokens, seen["target"]


def _assert_same_logits(alone: list[torch.Tensor], batched: list[torch.Tensor], label: str) -> None:
    assert len(alone) == len(batched), f"{label}: {len(batched)} sampled steps, alone {len(alone)}"
    for i, (a, b) in enumerate(zip(alone, batched, strict=True)):
        if not torch.equal(a, b):
            diff = float((a - b).abs().max())
            pytest.fail(f"{label}: logits of step {i} differ from the request alone (max |diff| {diff:.3g})")


@pytest.mark.parametrize(("budget", "num_others"), [(16, 1), (64, 5), (512, 15)])
def test_greedy_logits_equal_alone_and_batched(loaded, stack_path, budget, num_others):
    prompt = loaded.tokenizer.encode(TARGET)
    tokens, alone = _alone(loaded.model, prompt, GREEDY)
    got, batched = _batched(loaded.model, loaded.tokenizer, prompt, GREEDY, budget, num_others)
    _assert_same_logits(alone, batched, f"{stack_path}, budget {budget}, {num_others} others")
    assert got == tokens


def test_seeded_tokens_equal_alone_and_batched(loaded, stack_path):
    prompt = loaded.tokenizer.encode(TARGET)
    tokens, alone = _alone(loaded.model, prompt, SEEDED)
    got, batched = _batched(loaded.model, loaded.tokenizer, prompt, SEEDED, budget=32, num_others=7)
    _assert_same_logits(alone, batched, f"{stack_path}, seeded")
    assert got == tokens
