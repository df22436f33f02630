"""The OpenAI API as the official `openai` client sees it, against a real server on 127.0.0.1.

Oracle: the engine itself. Greedy token ids for each prompt are computed with `LLMEngine.generate`
before the server starts; every answer the server gives (streamed or not, alone or with seven
others in flight) must decode to exactly those tokens.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from live_server import MODEL_ID, make_llm, running_server, service_for

from luodi.engine.sampling import SamplingParams

QUESTIONS = [
    "What is 2+2?",
    "Name a color.",
    "Say hello in French.",
    "What is the capital of Japan?",
    "Count to five.",
    "What do bees make?",
    "Is water wet?",
    "Give me a fruit.",
]
MAX_TOKENS = 12
COMPLETION_PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def env(loaded):
    llm = make_llm(loaded, max_num_seqs=8)
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    chat_ids = [llm.prompt_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    raw_ids = llm.prompt_ids(COMPLETION_PROMPT, raw=True)
    outputs = llm.engine.generate(chat_ids + [raw_ids], greedy)  # the oracle, before any server runs
    expected = {
        "chat": [llm.tokenizer.decode(ids) for ids in outputs[:-1]],
        "chat_ids": outputs[:-1],
        "chat_prompt_ids": chat_ids,
        "completion": llm.tokenizer.decode(outputs[-1]),
        "completion_ids": outputs[-1],
        "completion_prompt_ids": raw_ids,
        "eos_ids": llm.engine.eos_token_ids,
    }
    with running_server(service_for(llm)) as base_url:
        yield base_url, expected


@pytest.fixture(scope="module")
def client(env) -> openai.OpenAI:
    return openai.OpenAI(base_url=env[0] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def expected(env) -> dict:
    return env[1]


def chat(client: openai.OpenAI, question: str, **kwargs):
    return client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        **kwargs,
    )


def finish_reason_for(ids: list[int], expected: dict) -> str:
    return "stop" if ids[-1] in expected["eos_ids"] else "length"


def test_health_and_models(env, client):
    health = httpx.get(env[0] + "/health").json()
    assert (health["status"], health["model"], health["detail"]) == ("ok", MODEL_ID, None)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_chat_greedy_equals_engine(client, expected):
    response = chat(client, QUESTIONS[0])
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected["chat"][0]
    assert choice.finish_reason == finish_reason_for(expected["chat_ids"][0], expected)
    usage = response.usage
    assert usage.prompt_tokens == len(expected["chat_prompt_ids"][0])
    assert usage.completion_tokens == len(expected["chat_ids"][0])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert response.model == MODEL_ID and response.id.startswith("chatcmpl-")


def test_chat_stream_with_usage(client, expected):
    chunks = list(chat(client, QUESTIONS[1], stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["chat"][1]
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == finish_reason_for(expected["chat_ids"][1], expected) and not any(reasons[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == len(expected["chat_ids"][1])
    assert all(c.usage is None for c in chunks[:-1])


def test_max_completion_tokens_wins_over_max_tokens(client):
    response = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        temperature=0,
        max_tokens=10,
        max_completion_tokens=3,
        extra_body={"ignore_eos": True},
    )
    assert response.usage.completion_tokens == 3 and response.choices[0].finish_reason == "length"


def test_completions_greedy_equals_engine(client, expected):
    response = client.completions.create(
        model=MODEL_ID, prompt=COMPLETION_PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )
    assert response.choices[0].text == expected["completion"]
    assert response.usage.prompt_tokens == len(expected["completion_prompt_ids"])
    assert response.usage.completion_tokens == len(expected["completion_ids"])
    streamed = client.completions.create(
        model=MODEL_ID,
        prompt=COMPLETION_PROMPT,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["completion"]
    assert chunks[-1].usage.completion_tokens == len(expected["completion_ids"])
    # Token ids as the prompt give the same answer as the text they encode.
    by_ids = client.completions.create(
        model=MODEL_ID, prompt=expected["completion_prompt_ids"], max_tokens=MAX_TOKENS, temperature=0
    )
    assert by_ids.choices[0].text == expected["completion"]


def stop_word(text: str) -> str:
    """A word from the middle of `text` to use as a stop string."""
    words = text.split()
    assert len(words) >= 3, text
    return " " + words[len(words) // 2]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_answer(client, expected, stream):
    full = expected["chat"][3]
    stop = stop_word(full)
    cut = full[: full.index(stop)]
    if stream:
        chunks = list(chat(client, QUESTIONS[3], stop=[stop], stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        reason = chunks[-1].choices[0].finish_reason
    else:
        choice = chat(client, QUESTIONS[3], stop=stop).choices[0]
        text, reason = choice.message.content, choice.finish_reason
    assert text == cut and reason == "stop"


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        response = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Invent a name for a cat."}],
            temperature=1.0,
            max_tokens=8,
            seed=seed,
        )
        return response.choices[0].message.content

    assert sample(1234) == sample(1234)


def test_logprobs(client, expected):
    response = chat(client, QUESTIONS[0], logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    tokens = [t.token for t in content]
    ids = expected["chat_ids"][0]
    # Greedy: the chosen token is the most likely one, and its logprob the top one.
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
        assert bytes(entry.bytes) == entry.token.encode()
    visible = len(ids) - (ids[-1] in expected["eos_ids"])  # EOS is not part of the text
    assert "".join(tokens[:visible]) == expected["chat"][0]
    completion = client.completions.create(
        model=MODEL_ID, prompt=COMPLETION_PROMPT, max_tokens=4, temperature=0, logprobs=2
    )
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert lp.text_offset[0] == 0 and all(len(top) == 2 for top in lp.top_logprobs)


def test_concurrent_streams_equal_one_at_a_time(env, client, expected):
    sequential = [chat(client, q).choices[0].message.content for q in QUESTIONS]
    assert sequential == expected["chat"]

    async def stream(aclient: openai.AsyncOpenAI, question: str) -> str:
        chunks = await aclient.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks])

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=env[0] + "/v1", api_key="unused", max_retries=0) as aclient:
            return await asyncio.gather(*(stream(aclient, q) for q in QUESTIONS))

    assert asyncio.run(all_at_once()) == sequential
