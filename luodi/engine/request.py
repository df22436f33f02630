"""A generation request as the engine tracks it: token ids in, token ids out, progress so far.

There is no prefill/decode flag: a request has `num_computed_tokens`, and whatever of its tokens
are not yet in the KV cache is what the scheduler may run next (a prompt chunk, or the one new
token of a decode). Knows nothing of text, blocks or tensors.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from luodi.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from luodi.engine.grammar import GrammarMatcher
    from luodi.engine.speculative import DraftState


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # end-of-sequence token, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context window
    ABORT = "abort"  # cancelled by the caller


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    max_total_tokens: int = 2**31  # the context window: prompt + output never exceeds it
    adapter: str | None = None  # the model's LoRA adapter this request runs with; None = the base
    cache_salt: str | None = None  # prefix-cache partition: blocks are shared only under an equal salt
    output_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int | None = None  # prompt tokens found in the prefix cache on admission
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    num_preemptions: int = 0
    matcher: GrammarMatcher | None = None  # the request's grammar state (constrained decoding)
    num_forced_tokens: int = 0  # output tokens the grammar forced, appended without a decode step
    draft_state: DraftState | None = None  # speculative decoding: its n-gram index and recent acceptance

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids if self.output_ids else self.prompt_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_tokens_left(self) -> int:
        """Output tokens the request may still append before max_tokens or the context window."""
        left = self.max_total_tokens - self.num_tokens
        if self.params.max_tokens is not None:
            left = min(left, self.params.max_tokens - len(self.output_ids))
        return left

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
        self.output_ids.append(token_id)
        self.finish_reason = self._finish_reason(token_id)

    def _finish_reason(self, token_id: int) -> FinishReason | None:
        params = self.params
        num_out = len(self.output_ids)
        if num_out >= params.min_tokens:
            if token_id in params.stop_token_ids:
                return FinishReason.STOP
            if not params.ignore_eos and token_id in self.eos_token_ids:
                return FinishReason.STOP
        if params.max_tokens is not None and num_out >= params.max_tokens:
            return FinishReason.LENGTH
        if self.num_tokens >= self.max_total_tokens:
            return FinishReason.LENGTH
        return None
