"""Sampler tests. Oracles: argmax, hand-computed penalties, Hugging Face logits processors and
warpers, softmax frequencies, and the same seeded request sampled alone vs inside other batches."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from luodi.engine.sampling import (
    SamplingParams,
    make_generator,
    processed_logits,
    sample,
)
from luodi.errors import InvalidParameterError

transformers_logits = pytest.importorskip("transformers.generation.logits_process")


@dataclass(frozen=True)
class History:
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)


def _random_logits(num_rows: int, vocab_size: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, vocab_size, generator=generator) * scale


def _sample(logits, params, histories=None, generators=None, eos_token_ids=()):
    num_rows = logits.shape[0]
    histories = histories or [History() for _ in range(num_rows)]
    generators = generators or [make_generator(p) for p in params]
    return sample(logits, params, histories, generators, eos_token_ids)


# --- greedy ---------------------------------------------------------------------------------


def test_all_greedy_is_argmax():
    logits = _random_logits(7, 50_000)
    out = _sample(logits, [SamplingParams(temperature=0.0)] * 7)
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 7


def test_mixed_batch_greedy_rows_are_argmax_and_logits_untouched():
    logits = _random_logits(4, 1000)
    before = logits.clone()
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.8, seed=1),
        SamplingParams(temperature=0.0, repetition_penalty=1.3),
        SamplingParams(temperature=0.0),
    ]
    histories = [History(), History(), History([3], [int(logits[2].argmax())]), History()]
    out = _sample(logits, params, histories)
    assert out.token_ids[0] == int(logits[0].argmax())
    assert out.token_ids[3] == int(logits[3].argmax())
    expected = processed_logits(logits[2], params[2], histories[2]).argmax()
    assert out.token_ids[2] == int(expected)
    assert torch.equal(logits, before)


# --- penalties ------------------------------------------------------------------------------


def test_presence_and_frequency_penalties_hand_computed():
    row = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, -1.0])
    params = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25)
    got = processed_logits(row, params, History(prompt_ids=[4, 5], output_ids=[1, 1, 3]))
    # token 1: 1 - 2*0.25 - 0.5; token 3: 3 - 0.25 - 0.5; prompt tokens are not penalized
    assert got.tolist() == pytest.approx([0.0, 0.0, 2.0, 2.25, 4.0, -1.0])


def test_all_penalties_hand_computed():
    row = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, -1.0])
    params = SamplingParams(
        temperature=0.0, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25
    )
    got = processed_logits(row, params, History(prompt_ids=[5], output_ids=[1, 1, 3]))
    # repetition first (prompt + output): 1 -> 0.5, 3 -> 1.5, -1 -> -2; then output penalties
    assert got.tolist() == pytest.approx([0.0, -0.5, 2.0, 0.75, 4.0, -2.0])


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    logits = _random_logits(1, 2000, seed=3)
    prompt, output = [5, 17, 17, 999, 1500], [17, 42, 1999, 0]
    params = SamplingParams(temperature=0.0, repetition_penalty=penalty)
    got = processed_logits(logits[0], params, History(prompt, output))
    processor = transformers_logits.RepetitionPenaltyLogitsProcessor(penalty=penalty)
    expected = processor(torch.tensor([prompt + output]), logits.clone())[0]
    torch.testing.assert_close(got, expected)


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    row = torch.zeros(10)
    row[2] = 5.0  # eos would win
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(7,))
    early = processed_logits(row, params, History(output_ids=[1]), eos_token_ids=[2])
    assert early[2] == -math.inf and early[7] == -math.inf
    late = processed_logits(row, params, History(output_ids=[1, 1]), eos_token_ids=[2])
    assert torch.equal(late, row)
    assert _sample(row[None], [params], [History(output_ids=[1])], eos_token_ids=[2]).token_ids != [2]


# --- truncation against the HF warpers -------------------------------------------------------


def _hf_allowed(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    warpers = [transformers_logits.TemperatureLogitsWarper(p.temperature)]
    if p.top_k > 0:
        warpers.append(transformers_logits.TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        warpers.append(transformers_logits.TopPLogitsWarper(p.top_p))
    if p.min_p > 0.0:
        warpers.append(transformers_logits.MinPLogitsWarper(p.min_p))
    scores = logits[None].clone()
    for warper in warpers:
        scores = warper(torch.zeros(1, 1, dtype=torch.long), scores)
    return torch.isfinite(scores[0])


TRUNCATIONS = [
    dict(top_k=1),
    dict(top_k=40),
    dict(top_k=40, temperature=0.5),
    dict(top_p=0.9),
    dict(top_p=0.5, temperature=1.5),
    dict(top_p=0.999),
    dict(min_p=0.05),
    dict(min_p=0.3, temperature=0.7),
    dict(top_k=100, top_p=0.8),
    dict(top_k=50, top_p=0.9, min_p=0.1, temperature=1.2),
    dict(top_p=0.95, min_p=0.02),
]


@pytest.mark.parametrize("kwargs", TRUNCATIONS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("scale", [0.1, 1.0, 4.0])  # flat (full-sort fallback) .. peaked
def test_truncation_matches_transformers_warpers(kwargs, scale):
    logits = _random_logits(3, 8192, seed=11, scale=scale)
    params = SamplingParams(**kwargs)
    for row in logits:
        ours = torch.isfinite(processed_logits(row, params, History()))
        assert torch.equal(ours, _hf_allowed(row, params)), kwargs


def test_sampled_tokens_stay_in_the_allowed_set():
    logits = _random_logits(6, 4096, seed=5, scale=2.0)
    params = [SamplingParams(**kw, seed=i) for i, kw in enumerate(TRUNCATIONS[:6])]
    generators = [make_generator(p) for p in params]
    for _ in range(30):
        out = _sample(logits, params, generators=generators)
        for row, (token, p) in enumerate(zip(out.token_ids, params)):
            assert _hf_allowed(logits[row], p)[token]


# --- distribution ---------------------------------------------------------------------------


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token with zero probability was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.mark.parametrize(
    ("kwargs", "reference"),
    [
        (dict(temperature=0.7), lambda x: torch.softmax(x / 0.7, -1)),
        (dict(temperature=1.3), lambda x: torch.softmax(x / 1.3, -1)),
        (dict(temperature=1.0, top_k=3), None),
    ],
)
def test_sampling_frequencies_match_softmax(kwargs, reference):
    logits = torch.tensor([1.0, 0.5, -0.3, 2.0, 0.0, -1.0, 1.5, 0.2])
    params = SamplingParams(seed=1234, **kwargs)
    if reference is None:  # top-k: softmax over what HF's warper leaves
        allowed = _hf_allowed(logits, params)
        probs = torch.softmax(logits.masked_fill(~allowed, -math.inf), -1)
    else:
        probs = reference(logits)
    generator = make_generator(params)
    counts = torch.zeros(8)
    num_draws = 20_000
    for _ in range(num_draws):
        counts[_sample(logits[None], [params], generators=[generator]).token_ids[0]] += 1
    # df <= 7: P(chi2 > 40) < 1e-5; the seed is fixed, so this is deterministic, not flaky.
    assert _chi_square(counts, probs) < 40.0


# --- seeds ----------------------------------------------------------------------------------


def _run_steps(position: int, others: list[SamplingParams], num_steps: int = 25) -> list[int]:
    """Sample a seeded request at `position` in a batch with `others`, fresh generators."""
    ours = SamplingParams(temperature=0.9, top_p=0.9, seed=4242)
    params = others[:position] + [ours] + others[position:]
    generators = [make_generator(p) for p in params]
    histories = [History() for _ in params]
    tokens = []
    for step in range(num_steps):
        logits = _random_logits(len(params), 3000, seed=100 + step, scale=2.0)
        logits[position] = _random_logits(1, 3000, seed=step, scale=2.0)[0]  # our row, fixed
        tokens.append(_sample(logits, params, histories, generators).token_ids[position])
    return tokens


def test_same_seed_same_tokens_whatever_the_batch():
    alone = _run_steps(0, [])
    others = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),  # unseeded: draws from torch's global RNG
        SamplingParams(temperature=0.5, top_k=5, seed=4242),
        SamplingParams(temperature=1.2, min_p=0.1, seed=7, presence_penalty=1.0),
    ]
    assert _run_steps(0, others) == alone
    assert _run_steps(2, others) == alone
    assert _run_steps(4, others[:3] + others[:1]) == alone
    assert len(set(alone)) > 1  # it really sampled


def test_different_seeds_differ():
    logits = torch.zeros(1, 1000)
    draws = {}
    for seed in (1, 2):
        params = SamplingParams(seed=seed)
        generator = make_generator(params)
        draws[seed] = [_sample(logits, [params], generators=[generator]).token_ids[0] for _ in range(10)]
    assert draws[1] != draws[2]


# --- logprobs -------------------------------------------------------------------------------


def test_logprobs_are_raw_model_log_softmax():
    logits = _random_logits(3, 5000, seed=9)
    params = [
        SamplingParams(temperature=0.0, logprobs=5),
        SamplingParams(temperature=0.7, top_k=20, repetition_penalty=1.5, seed=3, logprobs=0),
        SamplingParams(temperature=0.0),
    ]
    histories = [History(), History([1, 2], [3]), History()]
    out = _sample(logits, params, histories)
    raw = torch.log_softmax(logits, dim=-1)
    first, second, third = out.logprobs
    assert third is None
    assert first.token_id == out.token_ids[0]
    assert first.logprob == pytest.approx(float(raw[0].max()), abs=1e-5)
    top_values, top_ids = raw[0].topk(5)
    assert [t for t, _ in first.top] == top_ids.tolist()
    assert [v for _, v in first.top] == pytest.approx(top_values.tolist(), abs=1e-5)
    assert second.top == ()
    assert second.logprob == pytest.approx(float(raw[1, out.token_ids[1]]), abs=1e-5)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", float("nan")),
        ("top_k", -2),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("min_p", 1.5),
        ("min_p", -0.1),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 2.1),
        ("frequency_penalty", -3.0),
        ("logprobs", 21),
        ("logprobs", -1),
        ("min_tokens", -1),
        ("seed", 2**64),
        ("seed", "7"),
        ("stop", ("",)),
        ("stop_token_ids", (-1,)),
    ],
)
def test_invalid_params_name_the_param(param, value):
    with pytest.raises(InvalidParameterError) as info:
        SamplingParams(**{param: value})
    assert info.value.param == param
    assert param in str(info.value)


def test_min_tokens_above_max_tokens_is_invalid():
    with pytest.raises(InvalidParameterError) as info:
        SamplingParams(max_tokens=2, min_tokens=3)
    assert info.value.param == "min_tokens"


def test_valid_params_and_normalization():
    params = SamplingParams(temperature=0, stop="###", top_k=-1, max_tokens=None, logprobs=20)
    assert params.greedy
    assert params.stop == ("###",)
    assert not SamplingParams().greedy
    assert make_generator(SamplingParams(temperature=0.0, seed=1)) is None


def test_logit_bias_adds_to_the_named_logits():
    logits = _random_logits(3, 50, seed=5)
    best = int(logits[0].argmax())
    bias = {best: -100.0, 7: 2.5, 49: 100.0}
    params = SamplingParams(temperature=0, logit_bias=bias)
    expected = logits[0].clone()
    for token_id, value in bias.items():
        expected[token_id] += value
    assert torch.equal(processed_logits(logits[0], params, History()), expected)
    assert _sample(logits, [params] * 3).token_ids == [49, 49, 49]  # +100 wins greedy
    banned = SamplingParams(temperature=1.0, seed=3, logit_bias={best: -100.0})
    assert best not in _sample(logits[:1].expand(200, -1), [banned] * 200).token_ids


@pytest.mark.parametrize("bias", [{-1: 1.0}, {3: 101.0}, {3: float("nan")}])
def test_logit_bias_out_of_range_is_refused(bias):
    with pytest.raises(InvalidParameterError, match="logit_bias"):
        SamplingParams(logit_bias=bias)
