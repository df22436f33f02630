"""The scheduler driven directly (no model): exact chunks, positions and block ids, hand-computed.

Each step here is `schedule()` then `update()` with one made-up sampled token for every chunk that
reaches its request's last known token, as the runner would. Prompts use disjoint token ranges
unless a test wants them to share a prefix. Block size 4 throughout; a fresh pool hands out ids
0, 1, 2, ... in order.
"""

from __future__ import annotations

from luodi.engine.kv_cache import KVCacheManager
from luodi.engine.request import Request, RequestStatus
from luodi.engine.sampling import SamplingParams
from luodi.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

BLOCK_SIZE = 4
SAMPLED = 999  # the token every "sampled" step appends


def _scheduler(num_blocks: int, budget: int) -> Scheduler:
    kv = KVCacheManager(num_blocks, BLOCK_SIZE)
    return Scheduler(SchedulerConfig(max_num_batched_tokens=budget), kv)


def _add(scheduler: Scheduler, request_id: str, prompt: list[int]) -> Request:
    request = Request(request_id, prompt, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    scheduler.add(request)
    return request


def _chunks(output: SchedulerOutput) -> list[tuple[str, int, tuple[int, ...], tuple[int, ...], bool]]:
    """(request id, start position, token ids, block ids, needs a sample) per chunk, in order."""
    return [(c.request_id, c.start, c.token_ids, c.block_ids, c.needs_sample) for c in output.chunks]


def _step(scheduler: Scheduler) -> SchedulerOutput:
    output = scheduler.schedule()
    scheduler.update(output, {c.request_id: [SAMPLED] for c in output.chunks if c.needs_sample})
    return output


def test_running_decodes_are_scheduled_before_new_prefills():
    s = _scheduler(num_blocks=16, budget=8)
    _add(s, "a", [100, 101, 102])
    assert _chunks(_step(s)) == [("a", 0, (100, 101, 102), (0,), True)]
    # b and c arrive before a's decode; a's one token still goes first, then b's whole prompt,
    # then the one token of budget left (8 - 1 - 6) starts c's prompt.
    _add(s, "b", [200, 201, 202, 203, 204, 205])
    _add(s, "c", [300, 301, 302, 303, 304])
    assert _chunks(_step(s)) == [
        ("a", 3, (SAMPLED,), (0,), True),  # position 3 still fits block 0
        ("b", 0, (200, 201, 202, 203, 204, 205), (1, 2), True),
        ("c", 0, (300,), (3,), False),
    ]
    # Next step: a and b decode, c's prompt goes on with the rest (4 of the 6 tokens of budget).
    assert _chunks(_step(s)) == [
        ("a", 4, (SAMPLED,), (0, 4), True),  # position 4 opens a second block
        ("b", 6, (SAMPLED,), (1, 2), True),
        ("c", 1, (301, 302, 303, 304), (3, 5), True),
    ]


def test_chunked_prefill_cuts_prompts_to_the_token_budget():
    s = _scheduler(num_blocks=16, budget=4)
    a = _add(s, "a", list(range(10)))
    _add(s, "b", [50, 51, 52])
    # a's 10 tokens in chunks of 4, 4, 2; b waits until a leaves budget, then gets what is left.
    assert _chunks(_step(s)) == [("a", 0, (0, 1, 2, 3), (0,), False)]
    assert _chunks(_step(s)) == [("a", 4, (4, 5, 6, 7), (0, 1), False)]
    assert _chunks(_step(s)) == [("a", 8, (8, 9), (0, 1, 2), True), ("b", 0, (50, 51), (3,), False)]
    # b's unfinished prompt is running work: it is scheduled with a's decode, before anything new.
    assert _chunks(_step(s)) == [("a", 10, (SAMPLED,), (0, 1, 2), True), ("b", 2, (52,), (3,), True)]
    assert a.num_computed_tokens == 11 and a.output_ids == [SAMPLED, SAMPLED]


def test_block_ids_from_a_fresh_pool_and_prefix_cache_hits():
    s = _scheduler(num_blocks=8, budget=64)
    _add(s, "a", list(range(10)))
    assert _chunks(_step(s)) == [("a", 0, tuple(range(10)), (0, 1, 2), True)]
    # a's full blocks 0 ([0..3]) and 1 ([4..7]) are now cached. b shares those 8 tokens: it takes
    # blocks 0 and 1 and computes its own 3 tokens into a new block. c's prompt is exactly the 8
    # shared tokens: one must be left to compute, so only block 0 is a hit and c recomputes
    # [4..7] into a block of its own.
    b = _add(s, "b", [*range(8), 60, 61, 62])
    c = _add(s, "c", list(range(8)))
    assert _chunks(_step(s)) == [
        ("a", 10, (SAMPLED,), (0, 1, 2), True),
        ("b", 8, (60, 61, 62), (0, 1, 3), True),
        ("c", 4, (4, 5, 6, 7), (0, 4), True),
    ]
    assert (b.num_cached_tokens, c.num_cached_tokens) == (8, 4)
    assert s.kv.num_free_blocks == 3  # 5, 6, 7: blocks 0 and 1 are shared, not copied


def _fill_pool(s: Scheduler) -> tuple[Request, Request, Request]:
    """a (4 tokens, block 0), b (3 tokens, block 1), c (7 tokens, blocks 2 and 3): the pool of 4 is
    full. After the sampled token a needs a fifth position (a new block); b and c still fit."""
    a, b, c = _add(s, "a", [10, 11, 12, 13]), _add(s, "b", [20, 21, 22]), _add(s, "c", list(range(30, 37)))
    assert _chunks(_step(s)) == [
        ("a", 0, (10, 11, 12, 13), (0,), True),
        ("b", 0, (20, 21, 22), (1,), True),
        ("c", 0, tuple(range(30, 37)), (2, 3), True),
    ]
    assert s.kv.num_free_blocks == 0
    return a, b, c


def test_preemption_picks_the_newest_request():
    s = _scheduler(num_blocks=4, budget=64)
    a, b, c = _fill_pool(s)
    # a needs a block and none is free: c, the newest (not b, the next in line), gives back its
    # blocks, tail first, so a gets block 3.
    output = _step(s)
    assert _chunks(output) == [("a", 4, (SAMPLED,), (0, 3), True), ("b", 3, (SAMPLED,), (1,), True)]
    assert output.preempted_ids == ("c",)
    assert (c.status, c.num_computed_tokens, c.num_preemptions) == (RequestStatus.PREEMPTED, 0, 1)
    assert c.output_ids == [SAMPLED]  # kept: recomputed with its prompt when readmitted
    assert list(s.waiting) == [c] and s.running == [a, b]


def test_a_request_that_is_itself_the_newest_preempts_itself():
    s = _scheduler(num_blocks=2, budget=64)
    a, b = _add(s, "a", [10, 11, 12]), _add(s, "b", [20, 21, 22, 23])
    _step(s)
    # a's fourth position fits block 0; b's fifth needs a block, none is free, and the newest
    # running request is b: it gives back its own block and runs nothing this step.
    output = _step(s)
    assert _chunks(output) == [("a", 3, (SAMPLED,), (0,), True)]
    assert output.preempted_ids == ("b",)
    assert s.running == [a] and list(s.waiting) == [b] and s.kv.num_free_blocks == 1


def test_no_waiting_request_is_admitted_in_a_step_that_preempted():
    s = _scheduler(num_blocks=4, budget=64)
    _fill_pool(s)
    d = _add(s, "d", [40, 41])
    output = _step(s)
    # c's preemption freed two blocks and a took one: block 2 is free and the budget has room,
    # yet neither d nor c comes in this step.
    assert [chunk.request_id for chunk in output.chunks] == ["a", "b"]
    assert output.preempted_ids == ("c",)
    assert s.kv.num_free_blocks == 1
    assert [r.request_id for r in s.waiting] == ["c", "d"] and d.status is RequestStatus.WAITING
