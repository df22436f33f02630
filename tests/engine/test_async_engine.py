"""The async wrapper: concurrent streams give the synchronous engine's tokens; leaving aborts."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from luodi.engine.async_engine import AsyncLLMEngine
from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
PROMPTS = [[1, 2, 3], [7] * 20, list(range(40)), [9, 8]]


def test_concurrent_streams_match_sync_generation(tiny_model):
    expected = LLMEngine(tiny_model).generate(PROMPTS, GREEDY)
    engine = AsyncLLMEngine(LLMEngine(tiny_model, config=EngineConfig(block_size=4)))

    async def collect(prompt):
        tokens, finished = [], []
        async for out in engine.generate(prompt, GREEDY):
            tokens.extend(out.new_token_ids)
            finished.append(out.finished)
        assert finished[-1] and not any(finished[:-1])
        return tokens

    async def main():
        return await asyncio.gather(*(collect(p) for p in PROMPTS))

    try:
        assert asyncio.run(main()) == expected
    finally:
        engine.shutdown()


def test_leaving_a_stream_aborts_and_frees_blocks(tiny_model):
    sync = LLMEngine(tiny_model, config=EngineConfig(block_size=4, num_blocks=32))
    engine = AsyncLLMEngine(sync)

    async def main():
        stream = engine.generate(list(range(30)), SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
        async for _ in stream:
            break  # the client goes away after the first token
        await stream.aclose()

    try:
        asyncio.run(main())
        wait_until(lambda: not sync.has_unfinished)
        assert sync.kv.num_free_blocks == 32
    finally:
        engine.shutdown()


def wait_until(predicate, deadline_s: float = 60.0) -> None:
    """Poll; the deadline only guards against hanging forever."""
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, "the engine thread never got there"
        time.sleep(0.01)


def test_abort_returns_while_a_step_is_running(tiny_model):
    """The event loop must never wait for the engine: a step here holds until abort has returned."""
    sync = LLMEngine(tiny_model, config=EngineConfig(block_size=4, num_blocks=32))
    abort_returned, in_step = threading.Event(), threading.Event()
    step = sync.step
    blocked: list[bool] = []
    steps = itertools.count()

    def held_step():
        outputs = step()
        if next(steps) == 1:  # the second step: the first token has been delivered
            in_step.set()
            blocked.append(not abort_returned.wait(timeout=30))  # False: abort returned mid-step
        return outputs

    sync.step = held_step
    engine = AsyncLLMEngine(sync)

    async def main():
        stream = engine.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=500, ignore_eos=True))
        await anext(stream)
        await asyncio.to_thread(in_step.wait, 30)
        await stream.aclose()  # aborts; with a lock around each step this would wait for the step
        abort_returned.set()

    try:
        asyncio.run(main())
        assert blocked == [False]
        wait_until(lambda: not sync.has_unfinished)
        assert sync.kv.num_free_blocks == 32
    finally:
        engine.shutdown()


def test_validation_errors_are_raised_before_streaming(tiny_model):
    engine = AsyncLLMEngine(LLMEngine(tiny_model))

    async def main():
        async for _ in engine.generate([], GREEDY):
            pass

    try:
        with pytest.raises(InvalidParameterError, match="prompt is empty"):
            asyncio.run(main())
    finally:
        engine.shutdown()
