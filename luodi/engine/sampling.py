"""Sampling: per-request `SamplingParams` and the batched sampler that turns logits into tokens.

Owns: parameter validation (OpenAI ranges), logits processing (repetition / presence / frequency
penalties, `min_tokens`, temperature, top-k, top-p, min-p), drawing one token per row with that
request's own `torch.Generator`, and logprobs.

Must not know: tokenization (stop *strings* are matched elsewhere, on text), requests, the
scheduler or the model. Inputs are a `[B, V]` logits tensor plus per-row params and token
histories; outputs are token ids.

Processing order per row follows Hugging Face `generate` (whose warpers are our test oracles):
penalties -> logit_bias -> min_tokens mask -> temperature -> top-k -> top-p -> min-p -> draw. (vLLM
applies min-p before top-k/top-p; with both top-p and min-p set the kept sets can differ slightly.)

Logprobs follow vLLM's default (`logprobs_mode="raw_logprobs"`): log-softmax of the raw model
logits, before penalties, temperature and truncation, so they describe the model, not the sampler.
A request with a grammar is the exception: its logprobs are taken after the grammar's token mask
(disallowed tokens have probability 0, the allowed ones are renormalized), so a reported
alternative is always one the request could have produced.

Seeds: a request with a seed gets one `torch.Generator` (see `make_generator`) that lives as long
as the request and is drawn from once per sampled token (one uniform). Each random row is
processed on its own 1-D slice, so the token for a seeded request depends only on its logits
row, its params and its generator state — never on batch size or position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from luodi.engine.grammar import GrammarSpec, apply_bitmask
from luodi.errors import InvalidParameterError

__all__ = [
    "SPECULATIVE_METHODS",
    "SamplerOutput",
    "SamplingParams",
    "TokenHistory",
    "TokenLogprobs",
    "make_generator",
    "processed_logits",
    "sample",
]

MAX_LOGPROBS = 20
# top-p without top-k first looks for its nucleus among this many best tokens and falls back to
# a full sort only when they hold less than top_p of the mass (flat distributions).
_TOP_P_CANDIDATES = 1024
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
SPECULATIVE_METHODS = ("none", "ngram")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens for one request. Validated on construction."""

    max_tokens: int | None = None  # None: up to the context window
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0 or -1: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF style, over prompt + output tokens
    presence_penalty: float = 0.0  # OpenAI style, over output tokens
    frequency_penalty: float = 0.0  # OpenAI style, over output tokens
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs; 0: only the sampled token's
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: (token id, bias in [-100, 100]) added to its logit
    grammar: GrammarSpec | None = None  # constrained decoding: the output must match it
    # Speculative decoding for this request: "ngram" (prompt lookup) or "none"; None: the engine's
    # default. Tokens and their distribution are the same either way: only speed differs.
    speculative: str | None = None

    def __post_init__(self) -> None:
        # Accept a bare string or a list at the boundary; store tuples so params stay hashable.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple((t, b) for t, b in bias))
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        )

    def validate(self) -> None:
        """Raise `InvalidParameterError` naming the first parameter outside its allowed range."""
        _check_int(self.max_tokens, "max_tokens", low=1, optional=True)
        _check_range(self.temperature, "temperature", 0.0, 2.0)
        _check_int(self.top_k, "top_k", low=-1)
        if not (_is_number(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise _invalid("top_p", self.top_p, "in (0, 1]")
        _check_range(self.min_p, "min_p", 0.0, 1.0)
        if not (_is_number(self.repetition_penalty) and 0.0 < self.repetition_penalty < math.inf):
            raise _invalid("repetition_penalty", self.repetition_penalty, "a finite number > 0")
        _check_range(self.presence_penalty, "presence_penalty", -2.0, 2.0)
        _check_range(self.frequency_penalty, "frequency_penalty", -2.0, 2.0)
        _check_int(self.seed, "seed", low=_SEED_MIN, high=_SEED_MAX, optional=True)
        _check_int(self.logprobs, "logprobs", low=0, high=MAX_LOGPROBS, optional=True)
        _check_int(self.min_tokens, "min_tokens", low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise _invalid("min_tokens", self.min_tokens, f"<= max_tokens ({self.max_tokens})")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise _invalid("stop", self.stop, "non-empty strings")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise _invalid("stop_token_ids", self.stop_token_ids, "non-negative integers")
        if self.speculative not in (None, *SPECULATIVE_METHODS):
            raise _invalid("speculative", self.speculative, f"one of {', '.join(SPECULATIVE_METHODS)} or null")
        if self.grammar is not None and not isinstance(self.grammar, GrammarSpec):
            raise _invalid("grammar", self.grammar, "a GrammarSpec or None")
        for token_id, bias in self.logit_bias:
            if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
                raise _invalid("logit_bias", token_id, "keyed by non-negative token ids")
            if not (_is_number(bias) and -100.0 <= bias <= 100.0):
                raise _invalid("logit_bias", bias, "values in [-100, 100]")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _invalid(param: str, value: object, allowed: str) -> InvalidParameterError:
    return InvalidParameterError(f"{param}={value!r} is invalid: it must be {allowed}.", param=param)


def _check_range(value: object, param: str, low: float, high: float) -> None:
    # `not (low <= v <= high)` also rejects NaN.
    if not (_is_number(value) and low <= value <= high):  # type: ignore[operator]
        raise _invalid(param, value, f"a number in [{low:g}, {high:g}]")


def _check_int(
    value: object, param: str, low: int, high: int | None = None, optional: bool = False
) -> None:
    if value is None and optional:
        return
    in_range = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if in_range and high is not None:
        in_range = value <= high  # type: ignore[operator]
    if not in_range:
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise _invalid(param, value, allowed + (" or null" if optional else ""))


# ---------------------------------------------------------------------------------------------
# Sampler seams


class TokenHistory(Protocol):
    """What the sampler needs of a request: its prompt and the tokens generated so far."""

    @property
    def prompt_ids(self) -> Sequence[int]: ...

    @property
    def output_ids(self) -> Sequence[int]: ...


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """Raw-model logprob of the sampled token and the `top` most likely (token_id, logprob)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # None where the request asked for none


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """One generator per seeded request, made once; None means "use torch's global RNG"."""
    if params.seed is None or params.greedy:
        return None
    generator = torch.Generator(device="cpu")
    generator.manual_seed(params.seed)
    return generator


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    histories: Sequence[TokenHistory],
    generators: Sequence[torch.Generator | None],
    eos_token_ids: Sequence[int] = (),
    bitmask: torch.Tensor | None = None,
    masked_rows: Sequence[int] = (),
) -> SamplerOutput:
    """Pick one token per row of `logits` [B, V] (float32).

    `eos_token_ids` are masked (with `stop_token_ids`) while a row has fewer than `min_tokens`
    output tokens. `bitmask` [len(masked_rows), ceil(V / 32)] holds the grammar's allowed tokens
    of `masked_rows`: their disallowed logits are set to -inf *in place*, before anything else, so
    those rows' logprobs describe the constrained distribution (the mask renormalizes them).
    A row whose mask allows one token takes it without drawing, so a seeded request's random
    stream does not depend on whether its forced tokens were fast-forwarded or sampled.
    Other rows' logits are not modified.
    """
    forced = apply_bitmask(logits, bitmask, masked_rows) if bitmask is not None else {}
    num_rows = logits.shape[0]
    if not (len(params) == len(histories) == len(generators) == num_rows):
        raise ValueError(
            f"sample: {num_rows} logits rows but {len(params)} params, "
            f"{len(histories)} histories, {len(generators)} generators"
        )
    token_ids = _greedy_argmax(logits, params, histories)
    for row, token in forced.items():
        token_ids[row] = token  # the only token the grammar allows: no draw, generators untouched
    for row, (p, history, generator) in enumerate(zip(params, histories, generators, strict=True)):
        if token_ids[row] >= 0:
            continue
        row_logits = _process_row(logits[row], p, history, eos_token_ids)  # [V]
        token_ids[row] = int(row_logits.argmax()) if p.greedy else _draw(row_logits, p, generator)
    return SamplerOutput(token_ids=token_ids, logprobs=_logprobs(logits, params, token_ids))


def _needs_processing(p: SamplingParams, history: TokenHistory) -> bool:
    return p.has_penalties or bool(p.logit_bias) or len(history.output_ids) < p.min_tokens


def _greedy_argmax(
    logits: torch.Tensor, params: Sequence[SamplingParams], histories: Sequence[TokenHistory]
) -> list[int]:
    """Argmax (one batched op) for greedy rows with nothing to process; -1 marks the other rows."""
    plain = [p.greedy and not _needs_processing(p, h) for p, h in zip(params, histories, strict=True)]
    if not any(plain):
        return [-1] * len(plain)
    # One batched argmax over every row beats copying out the greedy ones.
    best = logits.argmax(dim=-1).tolist()
    return [token_id if is_plain else -1 for token_id, is_plain in zip(best, plain, strict=True)]


def _process_row(
    row: torch.Tensor, p: SamplingParams, history: TokenHistory, eos_token_ids: Sequence[int]
) -> torch.Tensor:
    """Penalties, logit_bias and the min_tokens mask on a copy of one row [V]; the row itself if none
    applies."""
    if not _needs_processing(p, history):
        return row
    row = row.clone()
    if p.has_penalties:
        _apply_penalties(row, p, history)
    if p.logit_bias:  # after penalties, as vLLM's logit_bias processor
        kept = [(t, b) for t, b in p.logit_bias if t < row.numel()]
        if kept:
            row[[t for t, _ in kept]] += torch.tensor([b for _, b in kept], dtype=row.dtype)
    if len(history.output_ids) < p.min_tokens:
        banned = [t for t in (*eos_token_ids, *p.stop_token_ids) if t < row.numel()]
        kept = row[banned].clone()
        row[banned] = -math.inf
        if row.max() == -math.inf:
            row[banned] = kept  # a grammar that allows nothing but the end outranks min_tokens
    return row


def _apply_penalties(row: torch.Tensor, p: SamplingParams, history: TokenHistory) -> None:
    """In place on one row [V]. Order as vLLM: repetition, then frequency and presence."""
    if p.repetition_penalty != 1.0:
        # HF RepetitionPenaltyLogitsProcessor: over prompt + output, each seen token once.
        seen = torch.tensor([*history.prompt_ids, *history.output_ids], dtype=torch.long)
        if seen.numel():
            seen = seen.unique()
            scores = row[seen]
            penalty = p.repetition_penalty
            row[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)
    if (p.presence_penalty or p.frequency_penalty) and len(history.output_ids):
        # OpenAI: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty
        ids, counts = torch.tensor(list(history.output_ids), dtype=torch.long).unique(return_counts=True)
        row[ids] -= counts.to(row.dtype) * p.frequency_penalty + p.presence_penalty


def _draw(row: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    """Temperature and truncation, then one inverse-CDF draw (a single uniform from `generator`)."""
    values, indices = _warp(row, p)
    choice = _inverse_cdf(values, generator)
    return choice if indices is None else int(indices[choice])


def _warp(row: torch.Tensor, p: SamplingParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature, top-k, top-p, min-p on one row [V] (not modified).

    Returns logits with removed tokens at -inf and, after top-k/top-p, the token ids they belong
    to (only the best K are kept, sorted descending); `None` ids means the values are the row.
    """
    scaled = row / p.temperature  # [V]
    if p.top_k > 0 or p.top_p < 1.0:
        values, indices = _top_k_top_p(scaled, p.top_k, p.top_p)  # [K], [K]
    else:
        values, indices = scaled, None
    if p.min_p > 0.0:
        # HF MinPLogitsWarper keeps probs >= min_p * max_prob, i.e. logits >= max + log(min_p).
        values = values.masked_fill(values < values.max() + math.log(p.min_p), -math.inf)
    return values, indices


def processed_logits(
    row: torch.Tensor, params: SamplingParams, history: TokenHistory, eos_token_ids: Sequence[int] = ()
) -> torch.Tensor:
    """The logits [V] one row is finally drawn from (-inf: not allowed); for tests and debugging.

    Greedy rows stop after penalties (argmax of the result is the token).
    """
    row = _process_row(row, params, history, eos_token_ids)
    if params.greedy:
        return row
    values, indices = _warp(row, params)
    if indices is None:
        return values
    full = torch.full_like(row, -math.inf)
    full[indices] = values
    return full


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The best K logits of a row, sorted descending, with tokens outside top-k/top-p at -inf.

    Top-p mirrors HF TopPLogitsWarper: a token survives iff the mass of strictly better tokens is
    < top_p. Without top-k we avoid sorting the row: the best `_TOP_P_CANDIDATES` (then 8x more)
    suffice whenever they hold >= top_p of the mass, since everything below them is then cut;
    only flat distributions reach a full sort.
    """
    vocab_size = logits.numel()
    num_candidates = min(top_k if top_k > 0 else _TOP_P_CANDIDATES, vocab_size)
    while True:
        if num_candidates < vocab_size:
            values, indices = torch.topk(logits, num_candidates)  # sorted descending [K]
        else:
            values, indices = torch.sort(logits, descending=True)  # faster than a full topk
        if top_p >= 1.0:
            return values, indices
        # Normalize over what top-k left (its K values) or, without top-k, the whole row.
        log_total = float(torch.logsumexp(values if top_k > 0 else logits, dim=0))
        # float64: a float32 cumsum over thousands of tokens drifts by ~1e-6 near top_p ~ 1.
        probs = torch.exp(values.double() - log_total)  # [K]
        cumulative = probs.cumsum(dim=0)
        covered = top_k > 0 or num_candidates == vocab_size or float(cumulative[-1]) >= top_p
        if covered:
            mass_above = cumulative - probs
            return values.masked_fill(mass_above >= top_p, -math.inf), indices
        num_candidates = min(num_candidates * 8, vocab_size)


def _inverse_cdf(logits: torch.Tensor, generator: torch.Generator | None) -> int:
    """Index drawn with probability softmax(logits), from one uniform of `generator`.

    One uniform per token (not V exponentials as `torch.multinomial` draws) keeps a draw O(V) and
    cheap; float64 keeps the CDF exact enough over 262k tokens.
    """
    weights = torch.exp(logits - logits.max())  # [N], -inf -> 0
    cdf = weights.cumsum(dim=0, dtype=torch.float64)
    target = float(torch.rand((), generator=generator, dtype=torch.float64)) * float(cdf[-1])
    index = int(torch.searchsorted(cdf, target, right=True))
    if index >= weights.numel() or weights[index] == 0.0:
        # target rounded up to the total: take the last token with positive weight.
        index = int(weights.nonzero()[-1])
    return index


def _logprobs(
    logits: torch.Tensor, params: Sequence[SamplingParams], token_ids: list[int]
) -> list[TokenLogprobs | None]:
    """Raw-model logprobs, log_softmax(logits), for rows that asked for them.

    Per row on views (logit - logsumexp): no [R, V] copy or log-softmax is materialized.
    """
    result: list[TokenLogprobs | None] = [None] * len(params)
    for row, p in enumerate(params):
        if p.logprobs is None:
            continue
        row_logits = logits[row].float()  # [V], a view for float32 input
        log_total = float(torch.logsumexp(row_logits, dim=0))
        top: tuple[tuple[int, float], ...] = ()
        if p.logprobs > 0:
            values, ids = row_logits.topk(p.logprobs)
            # A grammar-masked row lists only tokens it allows (the masked ones are -inf).
            top = tuple((int(i), float(v) - log_total) for i, v in zip(ids, values, strict=True) if v > -math.inf)
        chosen = float(row_logits[token_ids[row]]) - log_total
        result[row] = TokenLogprobs(token_id=token_ids[row], logprob=chosen, top=top)
    return result
