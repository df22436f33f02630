"""`LLMEngine`: the synchronous step loop that ties scheduler, KV cache, runner and text together.

Callers hand in prompt token ids (the engine never tokenizes); each `step()` runs one batched
forward pass and returns what every touched request gained: token ids, logprobs, and — when the
engine was given a tokenizer to decode with — UTF-8-safe text deltas with stop strings applied.
A request whose params carry a grammar is compiled through the engine's `GrammarBackend` (built by
the composition root from the tokenizer) into a matcher that constrains every token it samples;
the tokens the grammar forces arrive in the same output as the sampled token before them.
With speculative decoding (`EngineConfig.speculative`, per request `SamplingParams.speculative`)
one step may add several tokens to a request: its accepted draft tokens, then the sampled one.
Text is pushed token by token through the stop strings, so a stop string ends the output at the
token that completed it, as it would without speculation.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
import time
from dataclasses import dataclass, field

from torch import nn

from luodi.engine.detokenizer import Decoder, IncrementalDetokenizer, StopChecker
from luodi.engine.grammar import GrammarBackend, GrammarError, GrammarMatcher
from luodi.engine.kv_cache import KVCacheManager
from luodi.engine.request import FinishReason, Request
from luodi.engine.runner import ModelRunner, kv_bytes_per_block, kv_cache_dtype
from luodi.engine.sampling import SamplingParams, TokenLogprobs
from luodi.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from luodi.engine.speculative import NgramSpeculator, SpeculativeConfig
from luodi.errors import InvalidParameterError, PromptTooLongError


@dataclass(frozen=True, slots=True)
class EngineConfig:
    # 8, not the usual 16: a prefix is reused in whole blocks, so a request sharing a system prompt
    # recomputes on average half a block; measured (serve_load, SmolLM2) the second request's TTFT
    # fell from 31 to 22 ms, with decode and 16/64-stream throughput unchanged or better.
    block_size: int = 8
    kv_cache_bytes: int = 256 * 2**20  # at least one full-length sequence is always made room for
    num_blocks: int | None = None  # overrides kv_cache_bytes (tests use it to force preemption)
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None  # default: the model's context window, at most 8192
    enable_prefix_caching: bool = True
    enable_fast_forward: bool = True  # grammar-forced tokens skip their decode steps
    overlap_masks: bool = False  # grammar masks on a worker thread beside the forward pass
    # Prompt-lookup drafts verified in one forward pass; the default of requests that name none.
    speculative: SpeculativeConfig = SpeculativeConfig()


@dataclass(frozen=True, slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: tuple[int, ...]
    new_text: str
    new_logprobs: tuple[TokenLogprobs, ...]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int = 0


@dataclass(slots=True)
class _TextState:
    detokenizer: IncrementalDetokenizer
    stops: StopChecker


@dataclass(slots=True)
class StepStats:
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    num_drafts: int = 0  # speculative drafts verified (one per request and step)
    num_draft_tokens: int = 0  # their tokens
    num_accepted_tokens: int = 0  # of those, accepted
    seconds: float = 0.0
    # (prefill tokens, decode tokens, seconds) of the most recent steps
    history: deque[tuple[int, int, float]] = field(default_factory=lambda: deque(maxlen=4096))

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0


class LLMEngine:
    def __init__(self, model: nn.Module, tokenizer: Decoder | None = None, config: EngineConfig = EngineConfig(),
                 eos_token_ids: frozenset[int] = frozenset(), grammar_backend: GrammarBackend | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = frozenset(eos_token_ids or model.config.eos_token_ids)
        self.max_model_len = config.max_model_len or min(model.config.max_position_embeddings, 8192)
        param = next(model.parameters())
        dtype = kv_cache_dtype(param.dtype, param.device)
        num_blocks = config.num_blocks or max(
            config.kv_cache_bytes // kv_bytes_per_block(model, config.block_size, dtype),
            -(-self.max_model_len // config.block_size),
        )
        self.kv = KVCacheManager(num_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching)
        sched = SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, self.max_model_len,
                                enable_fast_forward=config.enable_fast_forward)
        self.speculator = NgramSpeculator(config.speculative)
        self.scheduler = Scheduler(sched, self.kv, self.speculator)
        self.runner = ModelRunner(model, num_blocks=num_blocks, block_size=config.block_size,
                                  eos_token_ids=self.eos_token_ids, overlap_masks=config.overlap_masks,
                                  fast_forward=config.enable_fast_forward)
        self.grammar_backend = grammar_backend
        self._text: dict[str, _TextState] = {}
        self._num_reported: dict[str, int] = {}  # output tokens already returned, per request
        self._ids = itertools.count()
        self.stats = StepStats()

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None,
                    adapter: str | None = None, cache_salt: str | None = None,
                    resume_ids: Sequence[int] = ()) -> str:
        """`adapter`: one of the model's LoRA adapters (`adapter_names`) to run with; None = the base.
        `cache_salt`: prefix-cache blocks are shared only with requests given the same salt.
        `resume_ids`: output tokens another engine already generated (and reported) for this request,
        whose process died: they are recomputed with the prompt, count towards max_tokens, and their
        text is not reported again, so the output continues where that engine stopped (greedy
        output is the one an uninterrupted run gives)."""
        request_id = request_id or f"req-{next(self._ids)}"
        self.check_request(prompt_ids, params, adapter=adapter, resume_ids=resume_ids)
        request = Request(request_id, list(prompt_ids), params, self.eos_token_ids, self.max_model_len,
                          adapter=adapter, cache_salt=cache_salt, matcher=self._matcher(params))
        if self.tokenizer is not None:
            self._text[request_id] = _TextState(IncrementalDetokenizer(self.tokenizer, request.prompt_ids),
                                                StopChecker(params.stop))
        if resume_ids:
            self._resume(request, resume_ids)
        self.scheduler.add(request)
        return request_id

    def _resume(self, request: Request, resume_ids: Sequence[int]) -> None:
        """Take `resume_ids` as output already reported: the grammar and the text state advance over
        them as they did in the engine that generated them, so the next delta starts after them."""
        if request.matcher is not None and not request.matcher.accept(list(resume_ids)):
            raise InvalidParameterError("resume_token_ids break the request's grammar; they cannot be "
                                        "output it generated", param="resume_token_ids")
        request.output_ids = list(resume_ids)
        self._num_reported[request.request_id] = len(resume_ids)
        state = self._text.get(request.request_id)
        if state is not None:
            for token_id in resume_ids:
                state.stops.push(state.detokenizer.push(token_id))

    def _matcher(self, params: SamplingParams) -> GrammarMatcher | None:
        """A fresh matcher for the request's grammar (compiled once per grammar, then copied)."""
        if params.grammar is None:
            return None
        if self.grammar_backend is None:
            raise GrammarError("this engine has no grammar backend, so it cannot constrain output; "
                               "load the model through luodi.llm.LLM", param=params.grammar.param)
        return self.grammar_backend.matcher(params.grammar)

    def abort(self, request_id: str) -> None:
        if self.scheduler.abort(request_id) is not None:
            self._forget(request_id)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    @property
    def adapter_names(self) -> tuple[str, ...]:
        adapters = getattr(self.model, "adapters", None)
        return adapters.names if adapters is not None else ()

    def check_request(self, prompt_ids: list[int], params: SamplingParams, prompt_param: str = "prompt",
                      adapter: str | None = None, resume_ids: Sequence[int] = ()) -> None:
        """Raise the error `add_request` would raise; callers use it before they commit to a response.

        `prompt_param` names the client's field that carried the prompt (e.g. "messages").
        """
        if adapter is not None and adapter not in self.adapter_names:
            raise InvalidParameterError(
                f"adapter {adapter!r} is not loaded; loaded: {', '.join(self.adapter_names) or 'none'}",
                param="model")
        if not prompt_ids:
            raise InvalidParameterError("the prompt is empty; give at least one token", param=prompt_param)
        vocab = self.model.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise InvalidParameterError(f"prompt token ids must lie in [0, {vocab})", param=prompt_param)
        self._matcher(params)  # compiles (and caches) the grammar: a bad one fails here
        self._check_resume(resume_ids, params, vocab)
        n, limit = len(prompt_ids), self.max_model_len
        wanted = n + (params.max_tokens or 1)
        if wanted > limit:
            what = f"{n} prompt tokens" + (f" + max_tokens {params.max_tokens}" if params.max_tokens else "")
            raise PromptTooLongError(
                f"{what} exceed the context window of {limit} tokens; shorten the prompt or lower max_tokens",
                param="max_tokens" if n < limit else prompt_param,
            )

    @staticmethod
    def _check_resume(resume_ids: Sequence[int], params: SamplingParams, vocab: int) -> None:
        if not resume_ids:
            return
        if min(resume_ids) < 0 or max(resume_ids) >= vocab:
            raise InvalidParameterError(f"resume_token_ids must lie in [0, {vocab})", param="resume_token_ids")
        if params.max_tokens is not None and len(resume_ids) >= params.max_tokens:
            raise InvalidParameterError(
                f"{len(resume_ids)} resume_token_ids leave nothing to generate under max_tokens "
                f"{params.max_tokens}", param="resume_token_ids")

    # -- the loop -----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        step_start = time.perf_counter()
        schedule = self.scheduler.schedule()
        if schedule.is_empty:
            return []
        start = time.perf_counter()
        result = self.runner.execute(schedule, self.scheduler.requests)
        touched = self.scheduler.update(schedule, result.token_ids)
        self._record(schedule, result.token_ids, time.perf_counter() - start)
        outputs = []
        for request in touched:
            if request.request_id not in result.token_ids:
                continue  # a prompt chunk that did not reach the end: nothing to report yet
            outputs.append(self._output(request, result.logprobs.get(request.request_id, [])))
        if _is_decode_only(schedule):  # what drafting decides between: the whole step's time
            num_drafting = sum(1 for c in schedule.chunks if c.num_draft)
            self.speculator.observe_step(len(schedule.chunks), schedule.num_tokens, num_drafting,
                                         time.perf_counter() - step_start)
        return outputs

    def _record(self, schedule: SchedulerOutput, sampled: dict[str, list[int]], seconds: float) -> None:
        decode = sum(1 for c in schedule.chunks if len(c.token_ids) - c.num_draft == 1 and c.start > 0)
        drafted = sum(c.num_draft for c in schedule.chunks)
        prefill = schedule.num_tokens - drafted - decode
        self.stats.num_prefill_tokens += prefill
        self.stats.num_decode_tokens += decode
        self.stats.num_drafts += sum(1 for c in schedule.chunks if c.num_draft)
        self.stats.num_draft_tokens += drafted
        self.stats.num_accepted_tokens += sum(len(sampled.get(c.request_id, ())) - 1
                                              for c in schedule.chunks if c.num_draft)
        self.stats.seconds += seconds
        self.stats.history.append((prefill, decode, seconds))

    def _new_tokens(self, request: Request,
                    logprobs: list[TokenLogprobs]) -> tuple[list[int], list[TokenLogprobs]]:
        """The output tokens not yet reported — the accepted draft and sampled ones, then any the
        grammar forced — and their logprobs: a forced token has probability 1 under the grammar
        (logprob 0)."""
        start = self._num_reported.get(request.request_id, 0)
        new = request.output_ids[start:]
        self._num_reported[request.request_id] = len(request.output_ids)
        if not logprobs:
            return new, []
        top = request.params.logprobs or 0
        sampled = logprobs[: len(new)]  # a request that finished early kept fewer tokens
        forced = [TokenLogprobs(t, 0.0, ((t, 0.0),) if top else ()) for t in new[len(sampled) :]]
        return new, [*sampled, *forced]

    def _output(self, request: Request, logprobs: list[TokenLogprobs]) -> RequestOutput:
        text = ""
        new_ids, new_logprobs = self._new_tokens(request, logprobs)
        state = self._text.get(request.request_id)
        if state is not None:
            text, num_kept = self._push_text(request, state, new_ids)
            if num_kept < len(new_ids):
                new_ids, new_logprobs = new_ids[:num_kept], new_logprobs[:num_kept]
        finished = request.finish_reason is not None
        if finished:
            self._forget(request.request_id)
        return RequestOutput(
            request_id=request.request_id,
            new_token_ids=tuple(new_ids),
            new_text=text,
            new_logprobs=tuple(new_logprobs),
            finished=finished,
            finish_reason=request.finish_reason.value if finished else None,
            num_prompt_tokens=len(request.prompt_ids),
            num_output_tokens=len(request.output_ids),
            num_cached_tokens=request.num_cached_tokens or 0,
        )

    def _push_text(self, request: Request, state: _TextState, new_ids: list[int]) -> tuple[str, int]:
        """The text of the new tokens, pushed one token at a time through the stop strings, and how
        many of them the output keeps. A stop string ends the request at the token that completed it;
        tokens after that one (the rest of an accepted draft, forced tokens) are dropped."""
        pieces = []
        num_kept = len(new_ids)
        for i, token_id in enumerate(new_ids):
            pieces.append(state.stops.push(state.detokenizer.push(token_id)))
            if state.stops.stopped:
                num_kept = i + 1
                break
        if state.stops.stopped:
            if num_kept < len(new_ids):
                del request.output_ids[len(request.output_ids) - (len(new_ids) - num_kept) :]
                request.finish_reason = None  # what ended it came after the stop string
            if request.finish_reason is None:
                if request.is_finished:
                    request.finish_reason = FinishReason.STOP
                else:
                    self.scheduler.abort(request.request_id, FinishReason.STOP)
        elif request.finish_reason is not None:
            pieces.append(state.stops.push(state.detokenizer.flush()))
            pieces.append(state.stops.flush())
        return "".join(pieces), num_kept

    def _forget(self, request_id: str) -> None:
        self._text.pop(request_id, None)
        self._num_reported.pop(request_id, None)
        self.runner.forget(request_id)

    # -- convenience --------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 adapters: list[str | None] | None = None) -> list[list[int]]:
        """Run prompts to completion together (each on its adapter, if given); returns their output ids."""
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        per_adapter = adapters if adapters is not None else [None] * len(prompts)
        ids = [self.add_request(p, sp, adapter=a) for p, sp, a in zip(prompts, per_prompt, per_adapter, strict=True)]
        outputs: dict[str, list[int]] = {i: [] for i in ids}
        while self.has_unfinished:
            for out in self.step():
                outputs[out.request_id].extend(out.new_token_ids)
        return [outputs[i] for i in ids]



def _is_decode_only(schedule: SchedulerOutput) -> bool:
    """Every chunk is one decode token (and maybe a draft): no prompt chunk, nothing preempted."""
    return not schedule.preempted_ids and all(
        c.needs_sample and c.start > 0 and len(c.token_ids) - c.num_draft == 1 for c in schedule.chunks)
