"""Batch invariance over HTTP: the same greedy and seeded requests give the same answers sent one by
one as sent 16 at a time, on the bf16 model as served by default.

Oracle: each request's answer (text and per-token logprobs) when it is the only one in flight. Under
load the server batches the 16 requests together and chunks their prompts under a small token
budget, so each row shares steps with decode rows and prompt chunks of the others.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from live_server import MODEL_ID, SMOLLM2, make_llm, running_server, service_for
from model_cache import pulled_model_path

from luodi.models.loader import load_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("batch_invariant_kernels")]

QUESTIONS = [
    "What is 2+2?", "Name a color.", "Say hello in French.", "What is the capital of Japan?",
    "Count to five.", "What do bees make?", "Is water wet?", "Give me a fruit.",
    "写一句关于春天的诗。", "Why is the sky blue?", "Name three planets.", "What is a CPU?",
    "Tell me a joke.", "How many legs does a spider have?", "什么是机器学习？", "Spell 'cat' backwards.",
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def base_url():
    loaded = load_model(str(pulled_model_path(SMOLLM2)), dtype="bfloat16")
    llm = make_llm(loaded, max_num_seqs=16, max_num_batched_tokens=64)
    with running_server(service_for(llm)) as url:
        yield url


def _kwargs(i: int, seeded: bool) -> dict:
    sampling = {"temperature": 0.8, "top_p": 0.95, "seed": 100 + i} if seeded else {"temperature": 0}
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": QUESTIONS[i]}], "max_tokens": MAX_TOKENS,
            "logprobs": True, **sampling}


def _answer(response) -> tuple[str, list[float]]:
    choice = response.choices[0]
    return choice.message.content, [t.logprob for t in choice.logprobs.content]


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_answers_are_the_same_alone_and_16_at_a_time(base_url, seeded):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    alone = [_answer(client.chat.completions.create(**_kwargs(i, seeded))) for i in range(len(QUESTIONS))]

    async def together():
        async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0) as aclient:
            return await asyncio.gather(*(aclient.chat.completions.create(**_kwargs(i, seeded))
                                          for i in range(len(QUESTIONS))))

    batched = [_answer(r) for r in asyncio.run(together())]
    for question, one, many in zip(QUESTIONS, alone, batched, strict=True):
        assert many == one, f"{question!r}: {many[0]!r} under load, {one[0]!r} alone"
