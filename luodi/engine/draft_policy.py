"""When drafting pays: measured step costs, each request's acceptance, and the step's draft lengths.

A step with R rows (decode tokens plus draft tokens) of n requests, m of them drafting, costs
t(n, R, m) seconds; request i drafting k tokens adds 1 + E_i(k) tokens to its output instead of 1.
Each step drafts the lengths k_i that maximize expected tokens per second,
(n + sum E_i(k_i)) / t(n, n + sum k_i, m), and none unless that beats n / t(n, n, 0): drafting
never lowers a step's expected yield per second (by the estimates).

t is measured: every step that only decodes (and verifies) feeds `StepCosts`, which keeps a
machine-wide level (seconds per unit of prior cost, following load and context length) and, per
(n, R) seen, the step's cost relative to that level. A pair not yet seen is estimated from the
nearest seen R of the same n, scaled by the prior shape `prior_cost`: so a draft length that
measured badly is not tried again at its neighbours, and one never tried is judged by the prior.
So that the plain step is measured too, one step of n requests in 32 goes without drafts.

The prior's numbers (SmolLM2-135M Q4_1, 2-vCPU Zen 4 shared with other work, one process
alternating configurations, medians of runner.execute; relative to the same requests decoding
without drafts): one request with 2 / 4 / 5 / 7 / 11 / 15 draft tokens cost 1.24 / 1.25 / 1.27 /
1.26 / 1.31 / 1.54 (another run: 7 and 15 drafts 1.32 and 1.82); four requests with 1 / 3 / 7 / 15
each 1.26 / 2.05 / 4.06 / 6.88, and 1.11 times one request's step without. So a step that verifies
any draft pays a fixed 15 % (its chunks take the attention path of prompt chunks) and 3 % per
request drafting, 2 % per row, and 50 % for every 8 rows past the first 8 (the CPU kernels stream
the weights once per 8 rows): 1.22 / 1.32 / 1.98 for one request at 3 / 8 / 16 rows; 1.33, 1.95
and 3.2 times the plain step for four requests at 8, 16 and 32 rows.

E_i is a two-state model of copying (`Acceptance`): the first draft token is accepted with
probability a, each further one, given the previous was, with probability c — copy runs are long
(c near 1) while a may be low — so E(k) = a (1 - c^k) / (1 - c). Both are recent frequencies
(exponentially weighted) from verified drafts and from shadow drafts: a request that did not
draft still had a proposal, and comparing it with the tokens the request then produced is
exactly verification (greedy or sampled, a draft token is accepted iff the request samples it),
so acceptance keeps being measured while drafting is off, at no cost.

Knows row counts, seconds and acceptance counts; not requests, tokens or tensors.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


# Drafting must beat plain decoding by this share of expected tokens per second, not merely tie:
# costs and acceptance are estimates, and a wrong draft step is lost time. Measured on a quiet
# machine (`python benchmarks/speculative.py`, 8 prompts, 2 reps): without a margin, free text at
# batch 4 drafted at 0.39 acceptance and decoded 0.95x as fast as without drafts; with 10 % for
# every step, still 0.935x (0.41 acceptance) while copying at batch 4 gained 1.24x: the estimates
# overrate a batched step's drafts by about a fifth, so a step of several requests needs 25 %.
DRAFT_MARGIN = 0.10
BATCHED_DRAFT_MARGIN = 0.25


def draft_margin(num_requests: int) -> float:
    return DRAFT_MARGIN if num_requests <= 1 else BATCHED_DRAFT_MARGIN


def prior_cost(num_rows: int, num_drafting: int = 0) -> float:
    """A step's cost by its rows and how many of its requests verify a draft, in units of a one-row
    step (the shape in the module docstring)."""
    drafting = 0.15 + 0.03 * num_drafting if num_drafting else 0.0
    return 1.0 + 0.02 * (num_rows - 1) + 0.5 * ((num_rows - 1) // 8) + drafting


class StepCosts:
    """Measured seconds of decode steps by (requests, rows); see the module docstring.

    In log space, each step's deviation from the level clipped to 3x either way: on a shared machine
    a step now and then takes ten times its usual time, and one such must not decide the next 20.
    """

    # Weight of the newest step: about the last 5 steps for the level, the last 5 seen per (n, R).
    LEVEL_WEIGHT = 0.2
    RATIO_WEIGHT = 0.2
    MAX_LOG_DEVIATION = math.log(3.0)
    BASELINE_EVERY = 32  # steps of n requests after which one runs without drafts, to be measured

    def __init__(self) -> None:
        self.log_level: float | None = None  # log seconds per unit of prior cost
        self._log_ratios: dict[int, dict[int, float]] = {}  # n -> R -> log(measured / (level * prior))
        self._seen_rows: dict[int, list[int]] = {}  # n -> the R of _log_ratios[n], sorted
        self._since_baseline: dict[int, int] = {}  # n -> steps of n requests since one without drafts

    def observe(self, num_requests: int, num_rows: int, num_drafting: int, seconds: float) -> None:
        unit = math.log(max(seconds, 1e-9) / prior_cost(num_rows, num_drafting))
        if self.log_level is None:
            self.log_level = unit
        deviation = min(max(unit - self.log_level, -self.MAX_LOG_DEVIATION), self.MAX_LOG_DEVIATION)
        ratios = self._log_ratios.setdefault(num_requests, {})
        old = ratios.get(num_rows)
        if old is None:
            bisect.insort(self._seen_rows.setdefault(num_requests, []), num_rows)
        ratios[num_rows] = deviation if old is None else old + self.RATIO_WEIGHT * (deviation - old)
        self.log_level += self.LEVEL_WEIGHT * deviation
        since = 0 if num_rows == num_requests else self._since_baseline.get(num_requests, 0) + 1
        self._since_baseline[num_requests] = since

    def estimate(self, num_requests: int, num_rows: int, num_drafting: int = 0) -> float:
        """Expected seconds (prior units before any measurement) of such a step."""
        log_ratio = 0.0
        seen = self._seen_rows.get(num_requests)
        if seen:  # the nearest seen row count, the smaller on a tie
            i = bisect.bisect_left(seen, num_rows)
            nearest = seen[i] if i == 0 or (i < len(seen) and seen[i] - num_rows < num_rows - seen[i - 1]) \
                else seen[i - 1]
            log_ratio = self._log_ratios[num_requests][nearest]
        return math.exp((self.log_level or 0.0) + log_ratio) * prior_cost(num_rows, num_drafting)

    def wants_baseline(self, num_requests: int) -> bool:
        """Whether a step of `num_requests` should go without drafts, so that its cost is measured
        beside the drafting steps' (costs 1 step in BASELINE_EVERY its drafts' gain)."""
        return self._since_baseline.get(num_requests, self.BASELINE_EVERY) >= self.BASELINE_EVERY


@dataclass(slots=True)
class Acceptance:
    """A request's recent draft acceptance: first-token and continuation frequencies (docstring)."""

    # Pseudo-counts of a fresh request (a = 0.5, c = 0.75, worth two drafts), and the weight kept
    # by older evidence per verified draft: about the last 8 drafts count.
    first_hits: float = 1.0
    first_trials: float = 2.0
    next_hits: float = 1.5
    next_trials: float = 2.0
    DECAY = 0.875

    def record(self, num_draft: int, num_accepted: int) -> None:
        d = self.DECAY
        self.first_hits = d * self.first_hits + (num_accepted > 0)
        self.first_trials = d * self.first_trials + 1
        # Positions 2..k were tried while every token before them was accepted.
        self.next_hits = d * self.next_hits + max(num_accepted - 1, 0)
        self.next_trials = d * self.next_trials + min(num_accepted, num_draft - 1)

    def expected(self, num_draft: int) -> float:
        """Expected accepted tokens of a draft of `num_draft` tokens."""
        a = self.first_hits / self.first_trials
        c = min(self.next_hits / self.next_trials, 0.999)
        return a * (1 - c**num_draft) / (1 - c)

    def gain(self, position: int) -> float:
        """Expected accepted tokens added by draft token `position` (1-based)."""
        return self.expected(position) - self.expected(position - 1)


def choose_draft_lengths(
    num_requests: int, num_rows: int, candidates: Sequence[tuple[int, Acceptance]],
    cost: Callable[[int, int, int], float],
) -> list[int]:
    """Draft tokens for each candidate (its longest draft, its acceptance) that maximize the step's
    expected tokens per second; all zero unless that beats not drafting by `draft_margin`.

    `num_requests` sample this step over `num_rows` rows before drafts; `cost(n, R, m)` is the time of a
    step of n requests over R rows, m of them drafting (`StepCosts.estimate`). Each E_i is concave, so for
    every total D the best split gives tokens one at a time to the largest marginal gain; the best
    D is then found by trying each (the cost is not concave: it jumps every 8 rows).
    """
    lengths = [0] * len(candidates)
    best_rate = num_requests / cost(num_requests, num_rows, 0) * (1 + draft_margin(num_requests))
    best = list(lengths)
    tokens = float(num_requests)
    num_drafting = 0
    heap = [(-acc.gain(1), i) for i, (room, acc) in enumerate(candidates) if room > 0]
    heapq.heapify(heap)
    while heap:
        neg_gain, i = heapq.heappop(heap)
        tokens -= neg_gain
        num_drafting += lengths[i] == 0
        lengths[i] += 1
        num_rows += 1
        room, acc = candidates[i]
        if lengths[i] < room:
            heapq.heappush(heap, (-acc.gain(lengths[i] + 1), i))
        rate = tokens / cost(num_requests, num_rows, num_drafting)
        if rate > best_rate:
            best_rate, best = rate, list(lengths)
    return best
