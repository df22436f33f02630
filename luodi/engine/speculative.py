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

Policy, adaptive per step and per request. A CPU kernel streams the weights once for up to 8
rows (`luodi.kernels.lowbit`), so a step's cost hardly grows until its rows pass that; measured on
SmolLM2 (2-core Zen 4, bf16, alternating steps in one process): one request verifying 4 draft
tokens (5 rows) cost 1.05x its plain decode step and 8 drafts 1.22x, while 4 requests with 1 draft
each (8 rows) cost 1.24x and with 4 each (20 rows) 3.2x. So drafts share a step budget of
`max_step_rows` rows: each of the n running requests drafts at most (max_step_rows - n) // n
tokens (4 alone, 3 with two running, 1 with three or four, none from five up). Alone, a request
always drafts (its draft rides in the pass its decode row pays for); beside others, only while its
recent acceptance (an exponential average of accepted / drafted tokens) stays at or above
`min_acceptance`. Below it the request pauses for `cooldown_steps` steps, doubled at each
consecutive pause (free generation stops costing its neighbours), then tries again in case its
text has turned to copying.

Knows requests' token ids and grammar matchers, logits rows and sampling; not blocks, the model
or text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from luodi.engine.sampling import SPECULATIVE_METHODS, SamplerOutput, SamplingParams, TokenLogprobs, sample
from luodi.errors import InvalidParameterError

if TYPE_CHECKING:
    from luodi.engine.request import Request


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    method: str = "ngram"  # the default of requests that name none: "ngram" or "none"
    num_draft_tokens: int = 4  # most draft tokens per request per step
    min_ngram: int = 1
    max_ngram: int = 3
    max_step_rows: int = 8  # decode rows plus draft tokens of a step (one pass of the CPU kernels)
    min_acceptance: float = 0.3  # beside others, recent accepted / drafted below this pauses a request
    smoothing: float = 0.3  # weight of the newest step in the recent acceptance
    cooldown_steps: int = 8  # the first pause; doubled per consecutive pause, up to max_cooldown_steps
    max_cooldown_steps: int = 256

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

    __slots__ = ("min_n", "max_n", "_ends", "_num_indexed")

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> end (exclusive) of its latest occurrence
        self._num_indexed = 0  # n-grams ending before this position are in _ends

    def propose(self, tokens: Sequence[int], max_len: int) -> list[int]:
        """Up to `max_len` tokens that followed the latest earlier occurrence of the longest matching
        suffix of `tokens` (an n-gram of min_n..max_n tokens); [] when none occurred before.

        A continuation that reaches the end of `tokens` goes on with its own start: text that
        repeats with period P is predicted to keep repeating (a loop drafts a whole `max_len`).
        """
        self._extend(tokens)
        for n in range(min(self.max_n, len(tokens) - 1), self.min_n - 1, -1):
            end = self._ends.get(tuple(tokens[len(tokens) - n :]))
            if end is not None:
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


# A request's recent acceptance before any evidence: with the default smoothing and threshold, two
# wholly rejected drafts in a row pause it (0.5 -> 0.35 -> 0.245 < 0.3).
_FRESH_ACCEPTANCE = 0.5


@dataclass(slots=True)
class DraftState:
    """One request's drafting state: its n-gram index and its recent acceptance."""

    index: NgramIndex
    acceptance: float = _FRESH_ACCEPTANCE
    cooldown: int = 0  # steps left before drafting again
    num_pauses: int = 0  # consecutive pauses (the next one lasts cooldown_steps * 2 ** num_pauses)


class NgramSpeculator:
    """Proposes drafts for the scheduler and learns from their verification."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config

    def is_enabled(self, params: SamplingParams) -> bool:
        return (params.speculative or self.config.method) == "ngram"

    def propose(self, request: Request, max_len: int, num_running: int) -> tuple[int, ...]:
        """The draft to verify after the request's last known token (may be empty).

        `max_len`: draft tokens the step's budget has room for.
        """
        c = self.config
        # A fair share of the step's spare rows; the step appends the accepted draft and one
        # sampled token, so stay within max_tokens too.
        room = min(c.num_draft_tokens, (c.max_step_rows - num_running) // max(num_running, 1), max_len,
                   request.num_tokens_left - 1)
        if room <= 0 or not self.is_enabled(request.params):
            return ()
        state = request.draft_state
        if state is None:
            state = request.draft_state = DraftState(NgramIndex(c.min_ngram, c.max_ngram))
        if state.cooldown > 0:
            state.cooldown -= 1
            if num_running > 1:
                return ()  # paused: alone, a draft costs next to nothing
        draft = state.index.propose(request.all_token_ids, room)
        if draft and request.matcher is not None:
            draft = draft[: request.matcher.num_valid(draft)]
        return tuple(draft)

    def record(self, request: Request, num_draft: int, num_accepted: int) -> None:
        """Fold one verified draft into the request's recent acceptance."""
        state = request.draft_state
        if state is None:
            return
        c = self.config
        rate = num_accepted / num_draft
        state.acceptance += c.smoothing * (rate - state.acceptance)
        if rate >= c.min_acceptance:
            state.num_pauses = 0  # a draft that paid: the next pause starts short again
        if state.acceptance >= c.min_acceptance:
            return
        state.cooldown = min(c.cooldown_steps << state.num_pauses, c.max_cooldown_steps)
        state.num_pauses += 1
        state.acceptance = _FRESH_ACCEPTANCE  # after the pause, judge the request afresh


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
