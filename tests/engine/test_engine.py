"""The engine's optimized paths against naive full-recompute generation, token for token."""

from __future__ import annotations

import pytest
import torch

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError, PromptTooLongError
from luodi.models.reference import full_logits, greedy_generate
from oracles import assert_greedy_match

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (3, 17, 40, 1, 64, 9)]
    prompts.append(prompts[4][:48] + [5, 6, 7])  # shares 48 tokens (12 blocks of 4) with prompt 4
    return prompts


@pytest.fixture(scope="module")
def reference(tiny_model):
    prompts = _prompts()
    outs = [greedy_generate(tiny_model, p, GREEDY.max_tokens) for p in prompts]
    logits = [full_logits(tiny_model, p + o)[len(p) - 1 : -1] for p, o in zip(prompts, outs)]
    return prompts, outs, logits


def _check(engine: LLMEngine, reference) -> None:
    prompts, ref_outs, ref_logits = reference
    outs = engine.generate(prompts, GREEDY)
    for got, ref, logits in zip(outs, ref_outs, ref_logits):
        assert_greedy_match(got, ref, logits)


def test_batched_requests_of_different_lengths(tiny_model, reference):
    _check(LLMEngine(tiny_model, config=EngineConfig(block_size=4)), reference)


def test_chunked_prefill_with_tiny_budget(tiny_model, reference):
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4, max_num_batched_tokens=5))
    _check(engine, reference)
    assert max(p for p, _, _ in engine.stats.history) <= 5


def test_prefix_cache_hits(tiny_model, reference):
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4, max_num_seqs=1))
    _check(engine, reference)  # one at a time: the last prompt finds prompt 4's blocks cached
    assert engine.kv.stats.hits >= 48


def test_forced_preemption(tiny_model, reference):
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4, num_blocks=30, max_model_len=128))
    _check(engine, reference)
    assert engine.kv.num_free_blocks == 30  # everything returned


def test_preemption_happens_under_pressure(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4, num_blocks=12, max_model_len=48))
    prompts = [[1] * 10, [2] * 10, [3] * 10]
    ids = [engine.add_request(p, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)) for p in prompts]
    preempted = set()
    while engine.has_unfinished:
        engine.step()
        preempted |= {r.request_id for r in engine.scheduler.waiting if r.num_preemptions}
    assert preempted
    assert engine.kv.num_free_blocks == 12
    assert ids


def test_seeded_sampling_is_independent_of_batch(tiny_model):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    alone = LLMEngine(tiny_model).generate([[4, 5, 6]], params)[0]
    other = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    batched = LLMEngine(tiny_model).generate([[9, 9], [4, 5, 6]], [other, params])[1]
    assert alone == batched


def test_abort_frees_blocks(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4, num_blocks=16))
    rid = engine.add_request(list(range(20)), SamplingParams(temperature=0, max_tokens=10))
    engine.step()
    assert engine.kv.num_free_blocks < 16
    engine.abort(rid)
    assert engine.kv.num_free_blocks == 16 and not engine.has_unfinished


def test_prompt_too_long_and_empty(tiny_model):
    engine = LLMEngine(tiny_model, config=EngineConfig(max_model_len=32))
    with pytest.raises(PromptTooLongError, match="context window of 32"):
        engine.add_request(list(range(30)), SamplingParams(max_tokens=5))
    with pytest.raises(InvalidParameterError, match="empty"):
        engine.add_request([], SamplingParams())


def test_unwritten_cache_memory_is_never_read(tiny_model, reference):
    """The KV cache is allocated uninitialized: poison it, and the tokens must not change."""
    engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4, max_num_batched_tokens=7))
    pad = engine.runner.pad_slot
    for cache in engine.runner.k_caches + engine.runner.v_caches:
        cache[:, :pad] = float("nan")
    _check(engine, reference)


def test_pad_block_is_zero(tiny_model):
    runner = LLMEngine(tiny_model, config=EngineConfig(block_size=4, num_blocks=8)).runner
    assert runner.pad_slot == 32
    for cache in runner.k_caches + runner.v_caches:
        assert cache.shape[1] == 36 and not cache[:, 32:].any()
