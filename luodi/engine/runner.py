"""The model runner: owns the KV cache memory and turns one scheduled step into one forward pass.

It flattens every scheduled chunk into `input_ids` / `positions` of shape [T], builds the shared
attention metadata once, runs the model once for the whole batch, and samples one token for each
request whose chunk reached its last known token — or, when the chunk ends with a speculative
draft, takes logits at the last known token and at every draft token and verifies the draft
(`luodi.engine.speculative.verify`). Requests with a grammar get their token bitmask filled for
the sampler (a row per verified position, the matcher walked along the draft) — inline, or
(`overlap_masks`) on a worker thread while the forward pass runs: llguidance releases the GIL,
but on a CPU the two share cores. A model serving LoRA adapters (one with an
`adapters` set, `luodi.models.adapters`) is told which adapter each token uses; requests on
different adapters and the base share the one forward pass. Knows tensors, block ids and
sampling params; not text or scheduling policy.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from luodi.engine.grammar import GrammarMatcher, new_bitmask
from luodi.engine.request import Request
from luodi.engine.sampling import TokenLogprobs, make_generator
from luodi.engine.scheduler import ScheduledChunk, SchedulerOutput
from luodi.engine.speculative import verify
from luodi.kernels.attention import PagedAttention, SequenceSlice, build_metadata


@dataclass(frozen=True, slots=True)
class StepResult:
    token_ids: dict[str, list[int]]  # request id -> its accepted draft tokens, then the sampled token
    logprobs: dict[str, list[TokenLogprobs]]  # of those tokens, for requests that asked


def kv_cache_dtype(model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """fp32 on CPU: decode attention's small matmuls run 2x faster in fp32 than in bf16 there."""
    return torch.float32 if device.type == "cpu" else model_dtype


def kv_bytes_per_block(model: nn.Module, block_size: int, dtype: torch.dtype) -> int:
    c = model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim
    return per_token * block_size * torch.finfo(dtype).bits // 8


@dataclass(frozen=True, slots=True)
class _Masks:
    bitmask: torch.Tensor  # [len(rows), ceil(V / 32)] int32
    rows: list[int]  # the logits rows they belong to
    done: Future | None  # pending fill when computed beside the forward pass


@dataclass(frozen=True, slots=True)
class _Sampled:
    """A request sampled this step: its logits rows (last known token, then one per draft token)."""

    request: Request
    rows: list[int]
    draft: tuple[int, ...]


class ModelRunner:
    def __init__(self, model: nn.Module, *, num_blocks: int, block_size: int, eos_token_ids: frozenset[int],
                 overlap_masks: bool = False, fast_forward: bool = True) -> None:
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.block_size = block_size
        self.eos_token_ids = tuple(sorted(eos_token_ids))
        # One block more than the pool hands out: the zeroed pad block that padded lookups read.
        # The rest stays uninitialized — never read before written — so memory is only touched
        # (and resident) as blocks come into use.
        self.pad_slot = num_blocks * block_size
        self.k_caches = [self._empty_cache(num_blocks + 1) for _ in range(model.config.num_hidden_layers)]
        self.v_caches = [self._empty_cache(num_blocks + 1) for _ in range(model.config.num_hidden_layers)]
        self._generators: dict[str, torch.Generator | None] = {}
        self._mask_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-mask") if overlap_masks else None
        self.mask_seconds: deque[float] = deque(maxlen=65536)  # time to fill each request's mask
        # Without fast-forward a forced token still wins, but takes a decode step of its own:
        # step-by-step constrained decoding, the oracle fast-forward is tested against.
        self.fast_forward = fast_forward

    def _empty_cache(self, num_blocks: int) -> torch.Tensor:
        c = self.model.config
        shape = (c.num_key_value_heads, num_blocks * self.block_size, c.head_dim)  # [Hkv, slots, D]
        cache = torch.empty(shape, dtype=kv_cache_dtype(self.dtype, self.device), device=self.device)
        cache[:, self.pad_slot :].zero_()
        return cache

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput, requests: dict[str, Request]) -> StepResult:
        input_ids, positions, seqs, logits_rows = [], [], [], []
        sampled: list[_Sampled] = []
        offset = 0
        for chunk in step.chunks:
            n = len(chunk.token_ids)
            input_ids.extend(chunk.token_ids)
            positions.append(torch.arange(chunk.start, chunk.start + n))
            seqs.append(SequenceSlice(chunk.start, n, chunk.block_ids))
            offset += n
            if chunk.needs_sample:
                first = len(logits_rows)
                logits_rows.extend(range(offset - 1 - chunk.num_draft, offset))
                sampled.append(_Sampled(requests[chunk.request_id], list(range(first, len(logits_rows))),
                                        _draft(chunk)))
        meta = build_metadata(seqs, self.block_size, self.device, self.pad_slot)
        kv = PagedAttention(self.k_caches, self.v_caches, meta)
        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        rows = torch.tensor(logits_rows, dtype=torch.long, device=self.device)
        masks = self._start_masks(sampled)
        with self._adapters_for(step, requests):
            logits = self.model(ids, torch.cat(positions).to(self.device), kv, rows)
        if not sampled:
            return StepResult({}, {})
        if masks is not None and masks.done is not None:
            masks.done.result()
        return self._sample(logits.float().cpu(), sampled, masks)

    def _start_masks(self, sampled: list[_Sampled]) -> _Masks | None:
        """The grammar bitmasks of the rows about to be sampled (None: no row has a grammar).

        A request verifying a draft gets a mask per row: its matcher is advanced along the draft
        (which the scheduler cut to what the grammar allows) and rolled back afterwards.
        """
        constrained = [s for s in sampled if s.request.matcher is not None]
        if not constrained:
            return None
        bitmask = new_bitmask(sum(len(s.rows) for s in constrained), self.model.config.vocab_size)

        def fill() -> None:
            i = 0
            for s in constrained:
                matcher = s.request.matcher
                assert matcher is not None
                for j in range(len(s.rows)):
                    self._fill_row(matcher, bitmask[i])
                    i += 1
                    if j < len(s.draft) and not matcher.accept([s.draft[j]]):
                        raise AssertionError(f"the grammar rejects draft token {s.draft[j]}")
                if s.draft:
                    matcher.rollback(len(s.draft))

        done = self._mask_pool.submit(fill) if self._mask_pool is not None else _run(fill)
        return _Masks(bitmask, [row for s in constrained for row in s.rows], done)

    def _fill_row(self, matcher: GrammarMatcher, row: torch.Tensor) -> None:
        start = time.perf_counter()
        forced = [] if self.fast_forward else matcher.forced_tokens()
        if forced:
            row.zero_()
            row[forced[0] // 32] = _bit(forced[0] % 32)
        else:
            matcher.fill_mask(row)
        self.mask_seconds.append(time.perf_counter() - start)

    def _adapters_for(self, step: SchedulerOutput, requests: dict[str, Request]) -> contextlib.AbstractContextManager:
        """The scope in which the model runs each token on its request's adapter (none: a no-op)."""
        adapters = getattr(self.model, "adapters", None)
        if adapters is None:
            return contextlib.nullcontext()
        chosen = [requests[c.request_id].adapter for c in step.chunks]
        if all(a is None for a in chosen):
            return contextlib.nullcontext()
        per_token = [-1 if a is None else adapters.index(a) for a in chosen]
        counts = torch.tensor([len(c.token_ids) for c in step.chunks])
        token_adapters = torch.tensor(per_token).repeat_interleave(counts)  # [T]; -1 = the base
        return adapters.use(token_adapters.to(self.device))

    def _sample(self, logits: torch.Tensor, sampled: list[_Sampled], masks: _Masks | None) -> StepResult:
        requests = [s.request for s in sampled]
        out = verify(
            logits, [s.rows for s in sampled], [s.draft for s in sampled], requests,
            [self._generator(r) for r in requests], self.eos_token_ids,
            bitmask=masks.bitmask if masks else None, masked_rows=masks.rows if masks else (),
        )
        ids = {r.request_id: v.token_ids for r, v in zip(requests, out, strict=True)}
        logprobs = {r.request_id: v.logprobs for r, v in zip(requests, out, strict=True) if v.logprobs}
        return StepResult(ids, logprobs)

    def _generator(self, request: Request) -> torch.Generator | None:
        if request.request_id not in self._generators:
            self._generators[request.request_id] = make_generator(request.params)
        return self._generators[request.request_id]

    def forget(self, request_id: str) -> None:
        self._generators.pop(request_id, None)


def _run(fill: Callable[[], None]) -> None:
    fill()


def _draft(chunk: ScheduledChunk) -> tuple[int, ...]:
    return chunk.token_ids[len(chunk.token_ids) - chunk.num_draft :]


def _bit(index: int) -> int:
    """Bit `index` of an int32 word, as the signed value torch stores (bit 31 is negative)."""
    return (1 << index) - (1 << 32 if index == 31 else 0)
