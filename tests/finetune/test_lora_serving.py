"""Serving LoRA adapters unmerged (`luodi.models.adapters`), against the merged model as the oracle.

Two adapters (one on all seven projections, one on a subset that splits the fused q/k/v and
gate/up layers) are trained by peft's own code path and saved in its format; the oracle for each
is `merge_adapter`'s output (peft's merge) loaded on its own. Requests on the base and on both
adapters run together in the same engine steps — with chunked prefill and prefix caching — and
each must give the oracle's greedy tokens and, in fp32, its logprobs within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError
from luodi.finetune.lora import LoraOptions, attach_lora, load_for_training, save_adapter
from luodi.finetune.merge import merge_adapter
from luodi.models.adapters import AdapterError, attach_adapters, read_adapter
from luodi.models.loader import load_model
from luodi.models.reference import full_logits

pytest.importorskip("peft")

ADAPTERS = {
    "all": LoraOptions(rank=4, alpha=8),
    "some": LoraOptions(rank=2, alpha=6, target_modules=("q_proj", "v_proj", "up_proj", "down_proj")),
}
PROMPTS = [
    [5, 9, 17, 3, 44, 90, 12, 7, 61, 33, 2, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79],
    [8, 100, 23, 54, 6, 77, 31, 12, 13],
    [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58],
]
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)


def _make_adapter(tiny_model_dir: Path, out: Path, options: LoraOptions, seed: int) -> Path:
    torch.manual_seed(seed)
    peft_model = attach_lora(load_for_training(str(tiny_model_dir), device="cpu", dtype="float32").model, options)
    with torch.no_grad():  # B = 0 at initialization: make the adapter change the model
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return save_adapter(peft_model, out, str(tiny_model_dir))


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """name -> (adapter directory, the merged model loaded for inference: the oracle)."""
    root = tmp_path_factory.mktemp("adapters")
    made = {}
    for seed, (name, options) in enumerate(ADAPTERS.items()):
        path = _make_adapter(tiny_model_dir, root / name, options, seed)
        merged = merge_adapter(str(tiny_model_dir), path, root / f"{name}-merged", dtype="float32").out
        made[name] = (path, load_model(str(merged), device="cpu", dtype="float32").model)
    return made


def _serving_model(tiny_model_dir: Path, adapters) -> torch.nn.Module:
    model = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    attach_adapters(model, [read_adapter(name, path) for name, (path, _) in adapters.items()])
    return model


def _engine(model: torch.nn.Module) -> LLMEngine:
    # 8 tokens a step: prompts run in chunks, and decodes of some requests share steps with others' prefill.
    return LLMEngine(model, config=EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=8))


def _run(engine: LLMEngine, jobs: list[tuple[list[int], str | None]]) -> dict[str, tuple[list[int], list[float], int]]:
    """Run all jobs together: request id -> (tokens, sampled-token logprobs, cached prompt tokens)."""
    ids = [engine.add_request(prompt, GREEDY, adapter=adapter) for prompt, adapter in jobs]
    results: dict[str, tuple[list[int], list[float], int]] = {i: ([], [], 0) for i in ids}
    while engine.has_unfinished:
        for out in engine.step():
            tokens, logprobs, _ = results[out.request_id]
            tokens.extend(out.new_token_ids)
            logprobs.extend(lp.logprob for lp in out.new_logprobs)
            results[out.request_id] = (tokens, logprobs, out.num_cached_tokens)
    return results


def _alone(model: torch.nn.Module, prompt: list[int]) -> tuple[list[int], list[float]]:
    engine = LLMEngine(model, config=EngineConfig(block_size=4, num_blocks=64))
    out = _run(engine, [(prompt, None)])
    tokens, logprobs, _ = next(iter(out.values()))
    return tokens, logprobs


def test_mixed_batch_equals_each_merged_model(tiny_model_dir, adapters):
    model = _serving_model(tiny_model_dir, adapters)
    base = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    oracles = {None: base, **{name: merged for name, (_, merged) in adapters.items()}}
    jobs = [(prompt, adapter) for prompt in PROMPTS for adapter in oracles]  # 9 requests, one engine
    engine = _engine(model)
    steps_with_all = _count_mixed_steps(engine, jobs)
    results = _run(engine, jobs)
    assert steps_with_all > 0
    per_job = list(results.values())
    for (prompt, adapter), (tokens, logprobs, _) in zip(jobs, per_job, strict=True):
        want_tokens, want_logprobs = _alone(oracles[adapter], prompt)
        assert tokens == want_tokens, adapter
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(want_logprobs), atol=1e-4), adapter


def _count_mixed_steps(engine: LLMEngine, jobs) -> int:
    """How many steps of a dry run mixed the base and both adapters in one forward pass."""
    ids = [engine.add_request(prompt, GREEDY, adapter=adapter) for prompt, adapter in jobs]
    mixed = 0
    while engine.has_unfinished:
        schedule = engine.scheduler.schedule()
        chosen = {engine.scheduler.requests[c.request_id].adapter for c in schedule.chunks}
        mixed += chosen == {None, *ADAPTERS}
        result = engine.runner.execute(schedule, engine.scheduler.requests)
        engine.scheduler.update(schedule, result.token_ids)
    assert all(i not in engine.scheduler.requests for i in ids)
    return mixed


def test_full_logits_equal_merged(tiny_model_dir, adapters):
    model = _serving_model(tiny_model_dir, adapters)
    prompt = PROMPTS[0]
    for index, (name, (_, merged)) in enumerate(adapters.items()):
        with model.adapters.use(torch.full((len(prompt),), index)):
            got = full_logits(model, prompt)
        torch.testing.assert_close(got, full_logits(merged, prompt), atol=1e-4, rtol=0)
        assert (got - full_logits(model, prompt)).abs().max() > 0.1  # the adapter does change the model


def test_base_requests_unchanged_by_loaded_adapters(tiny_model_dir, adapters):
    plain = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    jobs = [(prompt, None) for prompt in PROMPTS]
    got = _run(_engine(_serving_model(tiny_model_dir, adapters)), jobs)
    want = _run(_engine(plain), jobs)
    assert [v[:2] for v in got.values()] == [v[:2] for v in want.values()]


def test_prefix_cache_is_never_shared_across_adapters(tiny_model_dir, adapters):
    model = _serving_model(tiny_model_dir, adapters)
    _, merged = adapters["all"]
    engine = _engine(model)
    prompt = PROMPTS[0]  # 21 tokens: 5 full blocks of 4 may be reused
    first = _run(engine, [(prompt, None)])  # the base fills the cache with this prompt
    on_adapter = _run(engine, [(prompt, "all")])
    again = _run(engine, [(prompt, "all")])
    base_again = _run(engine, [(prompt, None)])
    assert [v[2] for v in on_adapter.values()] == [0]  # the base's blocks were not reused
    assert [v[2] for v in again.values()] == [20] and [v[2] for v in base_again.values()] == [20]
    want_tokens, want_logprobs = _alone(merged, prompt)
    for result in (on_adapter, again):
        tokens, logprobs, _ = next(iter(result.values()))
        assert tokens == want_tokens
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(want_logprobs), atol=1e-4)
    assert next(iter(base_again.values()))[0] == next(iter(first.values()))[0]


def test_unknown_adapter_is_refused(tiny_model_dir, adapters):
    engine = _engine(_serving_model(tiny_model_dir, adapters))
    with pytest.raises(InvalidParameterError, match="'nope' is not loaded; loaded: all, some"):
        engine.add_request(PROMPTS[0], GREEDY, adapter="nope")


def test_adapter_for_another_shape_is_refused(tiny_model_dir, adapters, tmp_path):
    path, _ = adapters["all"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((path / "adapter_config.json").read_text())
    tensors = load_file(path / "adapter_model.safetensors")
    tensors = {k: torch.cat([v, v], dim=-1) if "lora_A" in k else v for k, v in tensors.items()}
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    model = load_model(str(tiny_model_dir), device="cpu", dtype="float32").model
    with pytest.raises(AdapterError, match="do not fit the layer .* trained for another model"):
        attach_adapters(model, [read_adapter("bad", bad)])
    with pytest.raises(AdapterError, match="is not a LoRA adapter: adapter_config.json is missing"):
        read_adapter("x", tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
