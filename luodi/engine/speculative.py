"""Prompt-lookup speculative decoding: n-gram drafts, the per-request policy, and verification.

A request's next tokens often copy text already in its context: a summary quoting its source, an
answer extracting from retrieved passages, code edited in place. Each step, for a request whose
chunk reaches its last known token, the scheduler asks `NgramSpeculator` for a draft: the tokens
that followed the most recent earlier occurrence of the request's last n tokens (n from `max_ngram`
down to `min_ngram`), cut before the first one the request's grammar rejects. The draft rides at
the end of the request's chunk — the multi-token path prompt chunks take — so one forward pass
gives logits at the last known token and at every draft token, and `verify` accepts the longest
draft prefix the model would have produced itself, plus one token more. The KV entries of
rejected draft tokens stay in the request's blocks past `num_computed_tokens`, never read (a
query attends only to positions before it) and overwritten by the next chunk.

Verification is speculative sampling with a point-mass draft (Leviathan et al. 2023, "Fast
Inference from Transformers via Speculative Decoding", Algorithm 1 with q = one-hot(d)): accept d
with probability min(1, p(d) / q(d)) = p(d), and on a reject draw from norm(max(0, p - q)), which is
p with d removed and renormalized. Drawing x from p and accepting iff x == d is that rule
exactly — P(accept) = p(d), and a rejected x is distributed as p(. | x != d) — and it spends the
uniforms plain decoding spends, one per sampled token, in the same order: a seeded request gives
the same tokens with speculation as without. Greedy is the case p = one-hot(argmax).

Rows are drawn in rounds (round j: row j of every request still accepting) through
`sampling.sample`, so each row gets what plain decoding would apply at that position: the
request's history extended by the draft tokens before the row (penalties, min_tokens), its
grammar mask (the runner walks the matcher along the draft), forced tokens without a draw, and
logprobs of every accepted token.

Policy (`luodi.engine.draft_policy`): each step, every request whose chunk reaches its last known
token proposes its longest draft (up to `num_draft_tokens`); the policy cuts each to the length
that maximizes the step's expected tokens per second, from the measured cost of steps by their
rows and each request's recent acceptance — often to nothing beside many others, where a draft's
rows would make the kernels stream the weights once more. A proposal that is not verified stays
as a shadow draft, compared with the tokens the request goes on to produce, so acceptance is
measured while drafting is off.

Knows requests' token ids and grammar matchers, logits rows and sampling; not blocks, the model
or text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from luodi.engine.draft_policy import Acceptance, StepCosts, choose_draft_lengths
from luodi.engine.sampling import SPECULATIVE_METHODS, SamplerOutput, SamplingParams, TokenLogprobs, sample
from luodi.errors import InvalidParameterError

if TYPE_CHECKING:
    from luodi.engine.request import Request


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    method: str = "ngram"  # the default of requests that name none: "ngram" or "none"
    # Most draft tokens per request per step: 15, so that one request copying a long run can fill
    # two 8-row passes of the kernels; the policy decides how many of them pay.
    num_draft_tokens: int = 15
    min_ngram: int = 1
    max_ngram: int = 3
    adaptive: bool = True  # False: every proposal is verified whole (tests; the policy's oracle)

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise InvalidParameterError(
                f"speculative decoding method {self.method!r} is unknown; "
                f"use one of {', '.join(SPECULATIVE_METHODS)}",
                param="speculative")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise InvalidParameterError(
                f"n-gram sizes {self.min_ngram}..{self.max_ngram} are invalid: "
                "need 1 <= min_ngram <= max_ngram",
                param="speculative")
        if self.num_draft_tokens < 1:
            raise InvalidParameterError(f"num_draft_tokens={self.num_draft_tokens} must be >= 1",
                                        param="speculative")


class NgramIndex:
    """Where each n-gram of a growing token list last occurred with a token after it.

    Updated incrementally — O(new tokens x n-gram sizes) per call — so a long prompt is indexed
    once, not searched again every step.
    """

    __slots__ = ("min_n", "max_n", "_ends", "_num_indexed", "last_order")

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> end (exclusive) of its latest occurrence
        self._num_indexed = 0  # n-grams ending before this position are in _ends
        self.last_order = 0  # n of the n-gram the last proposal matched (0: none)

    def propose(self, tokens: Sequence[int], max_len: int) -> list[int]:
        """Up to `max_len` tokens that followed the latest earlier occurrence of the longest matching
        suffix of `tokens` (an n-gram of min_n..max_n tokens); [] when none occurred before.

        A continuation that reaches the end of `tokens` goes on with its own start: text that
        repeats with period P is predicted to keep repeating (a loop drafts a whole `max_len`).
        """
        self._extend(tokens)
        self.last_order = 0
        for n in range(min(self.max_n, len(tokens) - 1), self.min_n - 1, -1):
            end = self._ends.get(tuple(tokens[len(tokens) - n :]))
            if end is not None:
                self.last_order = n
                draft = list(tokens[end : end + max_len])
                period = len(tokens) - end
                while len(draft) < max_len:
                    draft.append(draft[len(draft) - period])
                return draft
        return []

    def _extend(self, tokens: Sequence[int]) -> None:
        # An n-gram ending at `end` has a continuation while end < len(tokens): index those ends.
        for end in range(max(self._num_indexed, self.min_n), len(tokens)):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._ends[tuple(tokens[end - n : end])] = end
        self._num_indexed = max(self._num_indexed, len(tokens))


@dataclass(slots=True)
class DraftState:
    """One request's drafting state: its n-gram index, its recent acceptance, and its shadow draft
    (a proposal not verified, compared with the tokens produced from `shadow_start` on)."""

    index: NgramIndex
    # By the order n of the n-gram a draft matched: a 3-gram match is copying far more often than
    # a 1-gram one, so each keeps its own acceptance (no lag when the text turns to copying).
    acceptances: list[Acceptance]
    order: int = 0  # of the latest proposal
    shadow: tuple[int, ...] = ()
    shadow_start: int = 0
    shadow_order: int = 0

    @property
    def acceptance(self) -> Acceptance:
        """The acceptance of drafts like the latest proposal."""
        return self.acceptances[self.order]


class NgramSpeculator:
    """Proposes drafts for the scheduler, cuts them to what pays, and learns from their verification."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.costs = StepCosts()

    def is_enabled(self, params: SamplingParams) -> bool:
        return (params.speculative or self.config.method) == "ngram"

    def plan(self, requests: Sequence[Request], num_requests: int, num_rows: int,
             max_total: int) -> list[tuple[int, ...]]:
        """The drafts to verify after each of `requests`' last known token (each may be empty).

        `num_requests` sample this step over `num_rows` rows before drafts; `max_total`: draft
        tokens the step's budget has room for.
        """
        proposals = [self.propose(r, max_total) for r in requests]
        if not self.config.adaptive:
            return _fit(proposals, max_total)
        candidates = [(len(p), self._state(r).acceptance) for r, p in zip(requests, proposals, strict=True)]
        if num_rows == num_requests and self.costs.wants_baseline(num_requests):
            lengths = [0] * len(candidates)  # a plain decode step, measured to compare the others with
        else:
            lengths = choose_draft_lengths(num_requests, num_rows, candidates, self.costs.estimate)
        drafts = _fit([p[:k] for p, k in zip(proposals, lengths, strict=True)], max_total)
        for request, proposal, draft in zip(requests, proposals, drafts, strict=True):
            state = self._state(request)
            if not draft and proposal and not state.shadow:
                state.shadow, state.shadow_start, state.shadow_order = proposal, request.num_tokens, state.order
        return drafts

    def propose(self, request: Request, max_len: int) -> tuple[int, ...]:
        """The longest draft the request's n-grams give after its last known token (may be empty)."""
        # The step appends the accepted draft and one sampled token: stay within max_tokens too.
        room = min(self.config.num_draft_tokens, max_len, request.num_tokens_left - 1)
        if room <= 0 or not self.is_enabled(request.params):
            return ()
        state = self._state(request)
        tokens = request.all_token_ids
        _resolve_shadow(state, tokens)
        draft = state.index.propose(tokens, room)
        state.order = state.index.last_order
        if draft and request.matcher is not None:
            draft = draft[: request.matcher.num_valid(draft)]
        return tuple(draft)

    def record(self, request: Request, num_draft: int, num_accepted: int) -> None:
        """Fold one verified draft into the request's acceptance."""
        state = request.draft_state
        if state is not None:
            state.acceptance.record(num_draft, num_accepted)
            state.shadow = ()  # the verified tokens overlap it: count them once

    def observe_step(self, num_requests: int, num_rows: int, num_drafting: int, seconds: float) -> None:
        """The measured time of a step in which `num_requests` decoded over `num_rows` rows,
        `num_drafting` of them verifying a draft."""
        self.costs.observe(num_requests, num_rows, num_drafting, seconds)

    def _state(self, request: Request) -> DraftState:
        if request.draft_state is None:
            c = self.config
            request.draft_state = DraftState(NgramIndex(c.min_ngram, c.max_ngram),
                                             [Acceptance() for _ in range(c.max_ngram + 1)])
        return request.draft_state


def _resolve_shadow(state: DraftState, tokens: Sequence[int]) -> None:
    """Record the shadow draft as verified once the tokens produced since settle it."""
    shadow = state.shadow
    if not shadow:
        return
    produced = tokens[state.shadow_start : state.shadow_start + len(shadow)]
    num_matched = 0
    while num_matched < len(produced) and produced[num_matched] == shadow[num_matched]:
        num_matched += 1
    if num_matched == len(produced) < len(shadow):
        return  # right so far: wait for more tokens
    state.acceptances[state.shadow_order].record(len(shadow), num_matched)
    state.shadow = ()


def _fit(drafts: list[tuple[int, ...]], max_total: int) -> list[tuple[int, ...]]:
    """Cut drafts, in order, to `max_total` tokens in all."""
    fitted = []
    for draft in drafts:
        fitted.append(draft[: max(max_total, 0)])
        max_total -= len(fitted[-1])
    return fitted


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True, slots=True)
class Verified:
    """A request's tokens from one step: its accepted draft tokens, then the token sampled after them."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs]  # one per token where the request asked for logprobs, else empty

    @property
    def num_accepted(self) -> int:
        return len(self.token_ids) - 1


@dataclass(frozen=True, slots=True)
class _History:
    """A request's tokens as the sampler sees them at a draft row: output so far plus the draft before it."""

    prompt_ids: Sequence[int]
    output_ids: Sequence[int]


def verify(
    logits: torch.Tensor,
    rows: Sequence[Sequence[int]],
    drafts: Sequence[Sequence[int]],
    requests: Sequence[Request],
    generators: Sequence[torch.Generator | None],
    eos_token_ids: Sequence[int] = (),
    bitmask: torch.Tensor | None = None,
    masked_rows: Sequence[int] = (),
) -> list[Verified]:
    """Accept each request's draft (see the module docstring) from its rows of `logits` [R, V].

    Request i owns rows `rows[i]` (len(drafts[i]) + 1 of them): row j holds the logits after its
    known tokens and draft[:j]. `bitmask` has one row per entry of `masked_rows` (rows of
    `logits`), the grammar mask at that row. A request without a draft is plain sampling.
    """
    tokens: list[list[int]] = [[] for _ in requests]
    logprobs: list[list[TokenLogprobs]] = [[] for _ in requests]
    mask_of = {row: m for m, row in enumerate(masked_rows)}
    alive = list(range(len(requests)))
    for j in range(max((len(d) for d in drafts), default=0) + 1):
        out = _sample_round(logits, [rows[i][j] for i in alive], [requests[i] for i in alive],
                            [drafts[i][:j] for i in alive], [generators[i] for i in alive], eos_token_ids,
                            bitmask, mask_of)
        still = []
        for k, i in enumerate(alive):
            token = out.token_ids[k]
            tokens[i].append(token)
            if out.logprobs[k] is not None:
                logprobs[i].append(out.logprobs[k])
            if j < len(drafts[i]) and token == drafts[i][j]:
                still.append(i)
        alive = still
        if not alive:
            break
    return [Verified(t, lp) for t, lp in zip(tokens, logprobs, strict=True)]


def _sample_round(
    logits: torch.Tensor, rows: list[int], requests: list[Request], prefixes: list[Sequence[int]],
    generators: list[torch.Generator | None], eos_token_ids: Sequence[int], bitmask: torch.Tensor | None,
    mask_of: dict[int, int],
) -> SamplerOutput:
    """One token for each of `rows`, as plain decoding would sample it after the draft prefix."""
    # All rows in order (every step without drafts): sample in place, no copy.
    batch = logits if rows == list(range(logits.shape[0])) else logits[rows]  # [B, V]
    histories = [r if not prefix else _History(r.prompt_ids, [*r.output_ids, *prefix])
                 for r, prefix in zip(requests, prefixes, strict=True)]
    masked = [(b, mask_of[row]) for b, row in enumerate(rows) if row in mask_of]
    round_mask = None
    if masked and bitmask is not None:
        round_mask = bitmask[[m for _, m in masked]]
    return sample(batch, [r.params for r in requests], histories, generators, eos_token_ids,
                  bitmask=round_mask, masked_rows=[b for b, _ in masked])
