"""The async wrapper: concurrent streams give the synchronous engine's tokens; leaving aborts."""

from __future__ import annotations

import asyncio

from luodi.engine.async_engine import AsyncLLMEngine
from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams

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
        assert sync.kv.num_free_blocks == 32 and not sync.has_unfinished
    finally:
        engine.shutdown()
