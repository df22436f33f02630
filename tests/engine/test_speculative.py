"""Prompt-lookup speculative decoding on the tiny random-weight Llama.

Oracles: a brute-force n-gram search for the drafts; softmax frequencies (chi-square) for the
acceptance rule; and plain decoding — the same engine with speculation off, itself tested against
the naive full-recompute loop — for every engine path: batched, chunked prefill, prefix cache,
preemption, seeded sampling with penalties, logprobs, drafts that are wrong on purpose.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
import torch

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.kv_cache import KVCacheManager
from luodi.engine.request import Request
from luodi.engine.sampling import SamplingParams, make_generator, processed_logits
from luodi.engine.scheduler import Scheduler, SchedulerConfig
from luodi.engine.draft_policy import Acceptance, StepCosts, choose_draft_lengths, prior_cost
from luodi.engine.speculative import NgramIndex, NgramSpeculator, SpeculativeConfig, verify
from luodi.errors import InvalidParameterError

OFF = SpeculativeConfig(method="none")
ALWAYS = SpeculativeConfig(adaptive=False)  # every proposal verified: drafts whatever the step costs
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


def _prompts() -> list[list[int]]:
    """Random prompts, some repeating a stretch of themselves (so drafts from the prompt get accepted)."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (3, 17, 40, 1, 64, 9)]
    prompts.append(prompts[2] * 3)
    prompts.append(prompts[4][:48] + prompts[1] + prompts[1])  # shares 48 tokens with prompt 4
    return prompts


def _generate(model, prompts, params, speculative: SpeculativeConfig = SpeculativeConfig(), **config):
    engine = LLMEngine(model, config=EngineConfig(block_size=4, speculative=speculative, **config))
    return engine.generate(prompts, params), engine


# --- drafting ---------------------------------------------------------------------------------


def _brute_force_draft(tokens: list[int], min_n: int, max_n: int, max_len: int) -> list[int]:
    for n in range(min(max_n, len(tokens) - 1), min_n - 1, -1):
        suffix = tokens[len(tokens) - n :]
        for end in range(len(tokens) - 1, n - 1, -1):  # latest occurrence ending before the last token
            if tokens[end - n : end] == suffix:
                extended = list(tokens)  # what followed, continued as the text would if it repeated
                for i in range(max_len):
                    extended.append(extended[end + i])
                return extended[len(tokens) :]
    return []


@pytest.mark.parametrize(("tokens", "draft"), [
    ([1, 2, 3, 4, 1, 2, 3], [4, 1, 2]),  # the 3-gram (1, 2, 3) was followed by 4, 1, 2
    ([1, 2, 5, 1, 2, 6, 7, 1, 2], [6, 7, 1]),  # the latest occurrence of (1, 2), not the first
    ([7, 8, 9, 5, 9], [5, 9, 5]),  # no 3- or 2-gram repeats: the 1-gram (9), then its loop
    ([1, 2, 3], []),  # nothing repeats
    ([4, 4, 4, 4], [4, 4, 4]),  # a loop keeps looping
    ([1, 2, 3, 1, 2], [3, 1, 2]),  # period 3
])
def test_ngram_draft_by_hand(tokens, draft):
    assert NgramIndex(1, 3).propose(tokens, max_len=3) == draft


def test_incremental_index_equals_brute_force_search():
    rng = random.Random(0)
    for trial in range(40):
        min_n, max_n = rng.choice([(1, 3), (2, 4), (1, 1)])
        index = NgramIndex(min_n, max_n)
        tokens = [rng.randrange(6) for _ in range(rng.randrange(1, 30))]
        for _ in range(30):  # tokens arrive a few at a time, as a request's output does
            max_len = rng.randrange(1, 6)
            assert index.propose(tokens, max_len) == _brute_force_draft(tokens, min_n, max_n, max_len), trial
            tokens += [rng.randrange(6) for _ in range(rng.randrange(1, 4))]


# --- the acceptance rule ----------------------------------------------------------------------


@dataclass
class _Req:
    params: SamplingParams
    prompt_ids: list[int] = field(default_factory=lambda: [0])
    output_ids: list[int] = field(default_factory=list)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    kept = expected > 0
    assert counts[~kept].sum() == 0, "drew a token of probability 0"
    return float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum())


FIRST = torch.tensor([1.0, 0.5, -0.3, 2.0, 0.0, -1.0, 1.5, 0.2])  # logits at the last known token
SECOND = torch.tensor([0.0, 2.0, 1.0, -1.0, 0.5, 0.3, -0.5, 1.2])  # after the draft token


@pytest.mark.parametrize(("params", "draft"), [
    (SamplingParams(temperature=1.0, seed=11), 6),  # a likely draft token
    (SamplingParams(temperature=1.0, seed=12), 5),  # an unlikely one
    (SamplingParams(temperature=0.8, top_k=4, seed=13), 2),  # one top-k removed: never accepted
])
def test_acceptance_rule_keeps_the_distribution(params, draft):
    """Accept d with probability p(d); on reject, draw from p without d; then the next row's p."""
    history = _Req(params)
    p1 = torch.softmax(processed_logits(FIRST, params, history), -1)
    p2 = torch.softmax(processed_logits(SECOND, params, _Req(params, output_ids=[draft])), -1)
    generator = make_generator(params)
    first, rejected, second = torch.zeros(8), torch.zeros(8), torch.zeros(8)
    num_draws = 20_000
    for _ in range(num_draws):
        logits = torch.stack([FIRST, SECOND])
        [out] = verify(logits, [[0, 1]], [[draft]], [history], [generator])
        first[out.token_ids[0]] += 1
        if out.num_accepted:
            assert out.token_ids[0] == draft and len(out.token_ids) == 2
            second[out.token_ids[1]] += 1
        else:
            assert len(out.token_ids) == 1 and out.token_ids[0] != draft
            rejected[out.token_ids[0]] += 1
    num_accepted = num_draws - rejected.sum()
    expected = num_draws * float(p1[draft])
    assert abs(num_accepted - expected) <= 5 * math.sqrt(max(expected, 1.0))  # binomial, 5 sigma
    # df <= 7: P(chi2 > 40) < 1e-5; the seeds are fixed, so these are deterministic, not flaky.
    assert _chi_square(first, p1) < 40.0
    without_draft = p1.clone()
    without_draft[draft] = 0
    assert _chi_square(rejected, without_draft / without_draft.sum()) < 40.0
    if num_accepted >= 1000:
        assert _chi_square(second, p2) < 40.0


def test_greedy_acceptance_stops_at_the_first_disagreement():
    logits = torch.eye(6)[[2, 3, 5, 1]] * 5  # argmax per row: 2, 3, 5, 1
    req = _Req(SamplingParams(temperature=0))
    for draft, want in [((2, 3, 5), [2, 3, 5, 1]), ((2, 4, 5), [2, 3]), ((0, 3, 5), [2]), ((), [2])]:
        rows = list(range(len(draft) + 1))
        [out] = verify(logits[rows], [rows], [draft], [req], [None])
        assert out.token_ids == want


# --- the policy -------------------------------------------------------------------------------


def _request(prompt: list[int], params: SamplingParams = GREEDY) -> Request:
    return Request("r", prompt, params, max_total_tokens=512)


def _acceptance(a: float, c: float) -> Acceptance:
    """Acceptance with first-token rate a and continuation rate c, from ten drafts' worth of counts."""
    return Acceptance(first_hits=10 * a, first_trials=10, next_hits=10 * c, next_trials=10)


def test_expected_accepted_tokens_by_hand():
    acc = _acceptance(0.5, 0.5)
    # 0.5 + 0.5 * 0.5 + 0.5 * 0.25 = a (1 - c^3) / (1 - c)
    assert acc.expected(3) == pytest.approx(0.875)
    assert acc.gain(2) == pytest.approx(0.25)
    acc = Acceptance()  # a fresh request: a = 1/2, c = 1.5/2
    acc.record(num_draft=4, num_accepted=2)  # position 1 hit; 2 hit; 3 missed; 4 never tried
    assert (acc.first_hits, acc.first_trials) == pytest.approx((0.875 + 1, 1.75 + 1))
    assert (acc.next_hits, acc.next_trials) == pytest.approx((1.3125 + 1, 1.75 + 2))
    acc.record(num_draft=3, num_accepted=3)  # all three: positions 2 and 3 hit, none missed
    assert (acc.next_hits, acc.next_trials) == pytest.approx((2.3125 * 0.875 + 2, 3.75 * 0.875 + 2))


def _passes(n: int, rows: int, num_drafting: int) -> float:
    """1 up to 8 rows (one pass of the kernels), then 0.5 more for every 8 rows begun."""
    return 0.5 + 0.5 * math.ceil(rows / 8) if rows > 8 else 1.0


@pytest.mark.parametrize(("candidates", "cost", "lengths"), [
    # Alone, E(k) = 1 - 0.5^k: 7 drafts give 1.99 tokens per unit of time; 15 give 2.0 / 1.5 = 1.33.
    ([(15, _acceptance(0.5, 0.5))], _passes, [7]),
    # Every row a full step: one draft gives 1.5 tokens for 2 units, below 1 per unit. No draft.
    ([(15, _acceptance(0.5, 0.5))], lambda n, r, m: float(r), [0]),
    # Break-even is no gain: E(1) = 0.5 and the row costs half a step (1.5 / 1.5 = 1 / 1); nor is
    # a gain within the margin (10 % alone): 1.5 / 1.4 = 1.07. 1.5 / 1.35 = 1.11 is.
    ([(1, _acceptance(0.5, 0.75))], lambda n, r, m: 1.0 + 0.5 * (r - 1), [0]),
    ([(1, _acceptance(0.5, 0.75))], lambda n, r, m: 1.0 + 0.4 * (r - 1), [0]),
    ([(1, _acceptance(0.5, 0.75))], lambda n, r, m: 1.0 + 0.35 * (r - 1), [1]),
    # A copier (a = c = 0.9) beside free text (a = 0.1): rows cost 0.1 each up to 8, then double.
    # The copier's gains 0.9, 0.81, ... all beat 0.1; 6 drafts (8 rows): (2 + 9 (1 - 0.9^6)) / 1.6
    # = 3.886 tokens per unit against 3.790 with 5 and 2 / 1 without.
    ([(15, _acceptance(0.9, 0.9)), (15, _acceptance(0.1, 0.5))],
     lambda n, r, m: 1.0 + 0.1 * (r - 2) if r <= 8 else 10.0, [6, 0]),
    # Eight requests: one draft each costs a second pass (16 rows: 1.5) for 8 x 0.4 tokens:
    # 11.2 / 1.5 = 7.47 < 8 / 1; two each, 24 rows: (8 + 8 x 0.76) / 2 = 7.04; more, less still.
    ([(15, _acceptance(0.4, 0.9))] * 8, _passes, [0] * 8),
    # ... unless they are nearly always right: 8 x 0.95 extra tokens, 15.6 / 1.5 = 10.4 > 8.
    ([(1, _acceptance(0.95, 0.9))] * 8, _passes, [1] * 8),
    # A draft no longer than the proposal.
    ([(2, _acceptance(0.9, 0.9))], _passes, [2]),
], ids=["alone", "every-row-a-step", "break-even", "within-margin", "pays", "copier-beside-free", "batch8",
        "batch8-sure", "short-proposal"])
def test_draft_lengths_maximize_expected_tokens_per_second(candidates, cost, lengths):
    num_requests = len(candidates)
    assert choose_draft_lengths(num_requests, num_requests, candidates, cost) == lengths


def test_step_costs_scale_the_prior_by_what_was_measured():
    costs = StepCosts()
    assert costs.estimate(1, 9, 1) == pytest.approx(prior_cost(9, 1))  # nothing measured: the prior
    assert prior_cost(9, 1) == pytest.approx(1 + 0.16 + 0.5 + 0.15 + 0.03)
    costs.observe(1, 1, 0, 0.010)  # the level: 0.010 s per unit; (1, 1) on it
    costs.observe(1, 8, 1, 0.026)  # prior 1.32: 0.0197 s per unit, log ratio log(1.97) (within 3x)
    log_ratio = math.log(0.026 / 1.32 / 0.010)
    level = 0.010 * math.exp(0.2 * log_ratio)
    assert costs.estimate(1, 1) == pytest.approx(level)
    assert costs.estimate(1, 8, 1) == pytest.approx(level * math.exp(log_ratio) * 1.32)
    # Unseen 9 rows: from the nearest seen (8), by the prior's shape; unseen batch 2: the prior.
    assert costs.estimate(1, 9, 1) == pytest.approx(level * math.exp(log_ratio) * prior_cost(9, 1))
    assert costs.estimate(2, 2) == pytest.approx(level * prior_cost(2))
    costs.observe(2, 2, 0, 10.0)  # a step 400x slow (a neighbour took the cores) counts as 3x
    assert costs.estimate(2, 2) == pytest.approx(level * 3 ** 0.2 * 3 * prior_cost(2))


def test_a_plain_step_is_measured_every_so_often():
    costs = StepCosts()
    assert costs.wants_baseline(4)  # never measured
    costs.observe(4, 4, 0, 0.01)
    for _ in range(StepCosts.BASELINE_EVERY - 1):
        costs.observe(4, 8, 4, 0.01)
        assert not costs.wants_baseline(4)
    costs.observe(4, 8, 4, 0.01)
    assert costs.wants_baseline(4)


def test_unverified_proposals_are_judged_as_shadow_drafts():
    """A request that does not draft still learns its acceptance from what it goes on to produce."""
    speculator = NgramSpeculator(SpeculativeConfig(num_draft_tokens=3))
    request = _request([1, 2, 3, 4, 1, 2, 3])
    speculator.costs.estimate = lambda n, r, m: float(r)  # every row a full step: drafting never pays
    assert speculator.plan([request], 1, 1, max_total=8) == [()]
    state = request.draft_state
    assert state.shadow == (4, 1, 2) and state.shadow_order == 3  # (1, 2, 3) occurred before
    acc = state.acceptances[3]
    assert acc.first_trials == 2  # the fresh prior
    for token in (4, 1):  # right so far: nothing recorded yet
        request.append_token(token)
        speculator.plan([request], 1, 1, max_total=8)
        assert acc.first_trials == 2
    request.append_token(9)  # the third token differs: 2 of 3 accepted
    speculator.plan([request], 1, 1, max_total=8)
    assert (acc.first_hits, acc.first_trials) == pytest.approx((0.875 + 1, 2 * 0.875 + 1))
    assert (acc.next_hits, acc.next_trials) == pytest.approx((1.5 * 0.875 + 1, 2 * 0.875 + 2))
    assert state.shadow == ()  # 9 never occurred before: nothing to propose, no new shadow
    assert state.acceptances[1].first_trials == state.acceptances[2].first_trials == 2  # other orders: untouched


def test_drafts_fit_max_tokens_and_the_context_window():
    speculator = NgramSpeculator(SpeculativeConfig(num_draft_tokens=4))
    params = SamplingParams(temperature=0, max_tokens=3)
    request = _request([5, 6, 7, 5, 6, 7, 5, 6], params)
    assert speculator.propose(request, 8) == (7, 5)  # 2 drafts + 1 sampled = max_tokens
    request.append_token(7)
    request.append_token(5)
    assert speculator.propose(request, 8) == ()  # one token left: nothing to verify it with
    window = Request("w", [5, 6, 7, 5, 6, 7, 5, 6], GREEDY, max_total_tokens=10)
    assert speculator.propose(window, 8) == (7,)


@pytest.mark.parametrize(("num_blocks", "drafts"), [(5, False), (6, True)])
def test_drafts_leave_a_free_block_per_running_request(num_blocks, drafts):
    """A draft's blocks never take the last block another request would need for its next token."""
    kv = KVCacheManager(num_blocks, block_size=4)
    speculator = NgramSpeculator(SpeculativeConfig(num_draft_tokens=4, adaptive=False))
    scheduler = Scheduler(SchedulerConfig(), kv, speculator)
    scheduler.add(_request([1, 2, 3, 4] * 4))  # 16 tokens: 4 blocks
    scheduler.update(scheduler.schedule(), {"r": [1]})
    [chunk] = scheduler.schedule().chunks  # 1 running + 1 block for a 4-token draft must stay free
    assert chunk.token_ids == ((1, 2, 3, 4, 1) if drafts else (1,))  # the sampled token, then the draft
    assert chunk.num_draft == (4 if drafts else 0)


def test_request_choice_overrides_the_engine_default(tiny_model):
    prompt = _prompts()[6]
    _, engine = _generate(tiny_model, [prompt], SamplingParams(temperature=0, max_tokens=20, speculative="none"))
    assert engine.stats.num_draft_tokens == 0
    _, engine = _generate(tiny_model, [prompt], SamplingParams(temperature=0, max_tokens=20, speculative="ngram"),
                          SpeculativeConfig(method="none", adaptive=False))
    assert engine.stats.num_draft_tokens > 0
    with pytest.raises(InvalidParameterError, match="speculative='eagle' is invalid") as info:
        SamplingParams(speculative="eagle")
    assert info.value.param == "speculative"
    with pytest.raises(InvalidParameterError, match="use one of none, ngram"):
        SpeculativeConfig(method="medusa")


# --- the engine against plain decoding ----------------------------------------------------------


@pytest.mark.parametrize("adaptive", [True, False], ids=["policy", "every-proposal"])
@pytest.mark.parametrize("config", [
    dict(max_num_seqs=1),  # one request at a time
    dict(max_num_seqs=4),  # batches of up to 4
    dict(max_num_seqs=4, max_num_batched_tokens=6),  # chunked prefill: drafts share a 6-token budget
    dict(max_num_seqs=4, num_blocks=40, max_model_len=256),  # preemption and recompute
    dict(max_num_seqs=8),  # all 8 run to the end together
], ids=["alone", "batch4", "chunked", "preempted", "batch8"])
def test_greedy_tokens_equal_plain_decoding(tiny_model, config, adaptive):
    """With the policy (which drafts by measured time, so what it drafts varies) and verifying every
    proposal whole."""
    prompts = _prompts()
    plain, _ = _generate(tiny_model, prompts, GREEDY, OFF, **config)
    spec, engine = _generate(tiny_model, prompts, GREEDY, SpeculativeConfig(adaptive=adaptive), **config)
    assert spec == plain
    if not adaptive:
        assert engine.stats.num_accepted_tokens > 0
    assert engine.kv.num_free_blocks == engine.kv.num_blocks  # every block returned


def test_seeded_sampling_with_penalties_equals_plain_decoding(tiny_model):
    """Verification draws what plain decoding draws, so even the sampled tokens do not change."""
    prompts = _prompts()
    params = [SamplingParams(temperature=t, top_p=0.9, top_k=k, seed=s, max_tokens=40, ignore_eos=True,
                             repetition_penalty=r, presence_penalty=pp, min_tokens=m)
              for t, k, s, r, pp, m in [(0.7, 0, 1, 1.0, 0.0, 0), (1.0, 20, 2, 1.1, 0.5, 10), (0.5, 0, 3, 1.0, -0.5, 0),
                                        (0.3, 5, 4, 1.0, 0.0, 0)] * 2]
    plain, _ = _generate(tiny_model, prompts, params, OFF, max_num_seqs=4)
    spec, engine = _generate(tiny_model, prompts, params, ALWAYS, max_num_seqs=4)
    again, _ = _generate(tiny_model, prompts, params, ALWAYS, max_num_seqs=4)
    assert spec == plain == again
    assert engine.stats.num_accepted_tokens > 0


def test_logprobs_of_accepted_tokens_equal_plain_decoding(tiny_model):
    prompts = _prompts()[5:]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, logprobs=3)
    runs = {}
    for name, speculative in (("plain", OFF), ("spec", ALWAYS)):
        engine = LLMEngine(tiny_model, config=EngineConfig(block_size=4, speculative=speculative))
        ids = [engine.add_request(p, params) for p in prompts]
        got = {i: [] for i in ids}
        while engine.has_unfinished:
            for out in engine.step():
                assert len(out.new_logprobs) == len(out.new_token_ids)
                got[out.request_id].extend(out.new_logprobs)
        runs[name] = [got[i] for i in ids]
        if name == "spec":
            assert engine.stats.num_accepted_tokens > 0
    for plain, spec in zip(runs["plain"], runs["spec"], strict=True):
        assert [lp.token_id for lp in spec] == [lp.token_id for lp in plain]
        assert [[t for t, _ in lp.top] for lp in spec] == [[t for t, _ in lp.top] for lp in plain]
        assert torch.allclose(torch.tensor([lp.logprob for lp in spec]), torch.tensor([lp.logprob for lp in plain]),
                              atol=1e-4)


def test_wrong_drafts_are_rolled_back(tiny_model, monkeypatch):
    """Drafts that are right for a while and then wrong: rejected tokens' KV entries, written in the
    verification pass, must never reach a later step."""
    prompts = _prompts()
    plain, _ = _generate(tiny_model, prompts, GREEDY, OFF)
    truth = {tuple(p): p + out for p, out in zip(prompts, plain, strict=True)}
    rng = random.Random(1)

    def half_right(self, tokens, max_len):
        full = max((t for p, t in truth.items() if list(p) == list(tokens[: len(p)])), key=len)
        right = full[len(tokens) : len(tokens) + max_len]
        cut = rng.randrange(len(right) + 1)
        return right[:cut] + [(t + 1) % 256 for t in right[cut:]]

    monkeypatch.setattr(NgramIndex, "propose", half_right)
    config = SpeculativeConfig(adaptive=False)  # verify every proposal
    spec, engine = _generate(tiny_model, prompts, GREEDY, config, max_num_seqs=4, max_num_batched_tokens=9)
    assert spec == plain
    assert 0 < engine.stats.num_accepted_tokens < engine.stats.num_draft_tokens


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5])
def test_output_length_is_exact(tiny_model, max_tokens):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    plain, _ = _generate(tiny_model, _prompts(), params, OFF, max_num_seqs=4)
    spec, _ = _generate(tiny_model, _prompts(), params, max_num_seqs=4)
    assert spec == plain and all(len(out) == max_tokens for out in spec)
