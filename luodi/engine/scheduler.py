"""The scheduler: each step, which requests run and how many of their tokens.

Policy (vLLM v1's): a token budget per step is spent on running requests first — their one-token
decodes and the unfinished chunks of prompts already started — then on waiting requests in
arrival order, whose prompts may be cut into chunks (chunked prefill), so a long prompt never
stalls the others' token generation. When the KV cache has no block left for a running request,
the most recently admitted request is preempted: its blocks are freed and it is recomputed later.

With speculative decoding, a running request's chunk that reaches its last known token may carry
a draft after it (`NgramSpeculator`), in the same budget; the draft never joins the request's
tokens. On update the request's computed tokens advance over the accepted draft tokens only: the
cache slots of rejected ones lie past `num_computed_tokens`, where the next chunk overwrites them,
and prefix caching registers only blocks of the request's own tokens.

Knows requests and block ids; not tensors, the model or text.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from luodi.engine.kv_cache import KVCacheManager
from luodi.engine.grammar import GrammarMatcher
from luodi.engine.request import FinishReason, Request, RequestStatus
from luodi.engine.speculative import NgramSpeculator


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """One request's work in a step: run `token_ids` at positions `start` .. start + len - 1."""

    request_id: str
    token_ids: tuple[int, ...]
    start: int
    block_ids: tuple[int, ...]
    needs_sample: bool  # the chunk reaches the request's last known token: sample the next one
    num_draft: int = 0  # the last num_draft token_ids are a speculative draft to verify


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...]
    preempted_ids: tuple[str, ...]

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512  # the token budget of one step
    max_model_len: int = 2048
    # Tokens a request's grammar forces join its output at once and are computed by its next
    # multi-token chunk, instead of one decode step each. Off: step-by-step constrained decoding.
    enable_fast_forward: bool = True


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager,
                 speculator: NgramSpeculator | None = None) -> None:
        self.config = config
        self.kv = kv
        self.speculator = speculator
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str, reason: FinishReason = FinishReason.ABORT) -> Request | None:
        """End a request early (cancelled, or a stop string matched in its text); frees its blocks."""
        request = self.requests.get(request_id)
        if request is None or request.is_finished:
            return None
        request.finish_reason = reason
        self._finish(request)
        return request

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[str] = []
        drafts = self._drafts(budget)
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            draft = drafts.get(request.request_id, ())[: budget - num_new]
            if draft and not self._has_room_for(draft):
                draft = ()
            if draft and self.kv.allocate(request, num_new + len(draft)) is None:
                draft = ()  # no room for the draft: decode plainly, preempting only for that
            if not draft and not self._allocate_or_preempt(request, num_new, preempted):
                continue
            chunks.append(self._chunk(request, num_new, draft))
            budget -= num_new + len(draft)
        if not preempted:
            budget = self._admit_waiting(budget, chunks)
        return SchedulerOutput(tuple(chunks), tuple(preempted))

    def update(self, output: SchedulerOutput, sampled: Mapping[str, Sequence[int]]) -> list[Request]:
        """Advance every scheduled request; append its new tokens (accepted draft tokens, then the one
        sampled after them). Returns the requests touched."""
        touched = []
        for chunk in output.chunks:
            request = self.requests.get(chunk.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue  # aborted while its step ran
            token_ids = sampled.get(chunk.request_id, ())
            num_accepted = max(len(token_ids) - 1, 0)
            request.num_computed_tokens += len(chunk.token_ids) - chunk.num_draft + num_accepted
            if chunk.num_draft and self.speculator is not None:
                self.speculator.record(request, chunk.num_draft, num_accepted)
            if token_ids:
                self._append(request, token_ids)
                if request.finish_reason is not None:
                    self._finish(request)
            touched.append(request)
        return touched

    def _drafts(self, budget: int) -> dict[str, tuple[int, ...]]:
        """The step's drafts, by request id: for the running requests whose chunk reaches their last
        known token, as the speculator's policy plans them for this step's rows."""
        if self.speculator is None:
            return {}
        candidates, num_rows, num_sampling = [], 0, 0
        for request in self.running:
            num_new = min(request.num_tokens - request.num_computed_tokens, budget - num_rows)
            if num_new <= 0:
                break
            num_rows += num_new
            if request.num_computed_tokens + num_new == request.num_tokens:
                num_sampling += 1
                candidates.append(request)
        if not candidates:
            return {}
        drafts = self.speculator.plan(candidates, num_sampling, num_rows, budget - num_rows)
        return {r.request_id: d for r, d in zip(candidates, drafts, strict=True) if d}

    def _has_room_for(self, draft: tuple[int, ...]) -> bool:
        """Whether the pool can take a draft: its blocks must not leave another running request
        without room for its next token (that would preempt it), so one free block per running
        request stays in reserve besides the draft's."""
        return self.kv.num_free_blocks >= len(self.running) + -(-len(draft) // self.kv.block_size)

    def _append(self, request: Request, token_ids: Sequence[int]) -> None:
        """Append tokens one by one, each advancing the request's grammar; after the last, the tokens
        the grammar then forces. A request that finishes drops the tokens after that point.

        A grammar that is complete (only end-of-sequence left) ends the request at once with
        "stop": no step is spent sampling the end token.
        """
        matcher = request.matcher
        for i, token_id in enumerate(token_ids):
            request.append_token(token_id)
            if request.finish_reason is not None:
                return
            if matcher is None:
                continue
            if not matcher.accept([token_id]):
                # Unreachable while the mask is applied; never emit text the grammar rejects.
                request.finish_reason = FinishReason.STOP
                return
            if i + 1 < len(token_ids) and matcher.is_finished():
                request.finish_reason = FinishReason.STOP  # complete within the accepted draft
                return
        if matcher is not None:
            self._fast_forward(request, matcher)

    def _fast_forward(self, request: Request, matcher: GrammarMatcher) -> None:
        """Append the tokens the grammar forces now; end the request if the grammar is complete."""
        if self.config.enable_fast_forward:
            for forced in matcher.forced_tokens():
                request.append_token(forced)
                request.num_forced_tokens += 1
                if request.finish_reason is not None:
                    return
                if not matcher.accept([forced]):
                    request.finish_reason = FinishReason.STOP
                    return
        if matcher.is_finished():
            request.finish_reason = FinishReason.STOP

    def _admit_waiting(self, budget: int, chunks: list[ScheduledChunk]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            num_cached = self.kv.cached_prefix(request)
            request.num_computed_tokens = num_cached
            num_new = min(request.num_tokens - num_cached, budget)
            if self.kv.allocate(request, num_new) is None:
                self.kv.free(request)  # give back the prefix blocks it took
                request.num_computed_tokens = 0
                break
            self.kv.record_prefix_lookup(len(request.prompt_ids), num_cached)
            if request.num_cached_tokens is None:
                request.num_cached_tokens = num_cached
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(self._chunk(request, num_new))
            budget -= num_new
        return budget

    def _allocate_or_preempt(self, request: Request, num_new: int, preempted: list[str]) -> bool:
        while self.kv.allocate(request, num_new) is None:
            victim = self.running[-1]
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)

    def _finish(self, request: Request) -> None:
        request.status = RequestStatus.FINISHED
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request)
        del self.requests[request.request_id]

    def _chunk(self, request: Request, num_new: int, draft: tuple[int, ...] = ()) -> ScheduledChunk:
        start = request.num_computed_tokens
        tokens = request.all_token_ids[start : start + num_new]
        return ScheduledChunk(
            request_id=request.request_id,
            token_ids=(*tokens, *draft),
            start=start,
            block_ids=tuple(self.kv.block_ids(request.request_id)),
            needs_sample=start + num_new == request.num_tokens,
            num_draft=len(draft),
        )
