"""n > 1, lists of prompts, echo and logit_bias, through the official `openai` client against a real
server on 127.0.0.1.

Oracles: the same server's answer to the single request each choice stands for (n = 1, one prompt,
seed + j for sample j as vLLM numbers them); the prompt text for echo; the prefix cache's counter for
"the prompt is computed once"; the biased token itself for logit_bias.
"""

from __future__ import annotations

import openai
import pytest
from live_server import MODEL_ID, make_llm, running_server, service_for

pytestmark = pytest.mark.slow

MAX_TOKENS = 10
BLOCK = 8  # the engine's default block size: prompt blocks are shared whole


@pytest.fixture(scope="module")
def env(loaded):
    llm = make_llm(loaded, max_num_seqs=8)
    with running_server(service_for(llm)) as base_url:
        yield openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0), llm


@pytest.fixture(scope="module")
def client(env) -> openai.OpenAI:
    return env[0]


def chat(client, content: str, **kwargs):
    kwargs.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": content}], **kwargs)


def complete(client, prompt, **kwargs):
    kwargs.setdefault("max_tokens", MAX_TOKENS)
    return client.completions.create(model=MODEL_ID, prompt=prompt, **kwargs)


def test_n_greedy_choices_share_one_prompt_computation(client):
    question = "Describe the water cycle for a class of ten-year-old pupils, step by step, please."
    many = chat(client, question + " Thanks!", temperature=0, n=3)
    alone = chat(client, question + " Thanks!", temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert {c.message.content for c in many.choices} == {alone.choices[0].message.content}
    prompt_tokens = many.usage.prompt_tokens
    assert prompt_tokens == alone.usage.prompt_tokens  # counted once, not per choice
    assert many.usage.completion_tokens == 3 * alone.usage.completion_tokens
    # samples 1 and 2 started after sample 0 had filled the prompt's blocks: they reuse every full one
    assert many.usage.prompt_tokens_details.cached_tokens >= 2 * ((prompt_tokens - 1) // BLOCK * BLOCK)


def test_seeded_samples_are_seed_plus_j(client):
    many = chat(client, "Invent a name for a cat.", temperature=1.0, seed=42, n=4)
    for j, choice in enumerate(many.choices):
        alone = chat(client, "Invent a name for a cat.", temperature=1.0, seed=42 + j)
        assert choice.message.content == alone.choices[0].message.content


def test_streamed_choices_concatenate_to_the_non_streamed_ones(client):
    kwargs = dict(temperature=1.0, seed=7, n=3)
    whole = chat(client, "Name a river.", **kwargs)
    texts, finished = ["", "", ""], [None, None, None]
    for chunk in chat(client, "Name a river.", stream=True, **kwargs):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finished[choice.index] = choice.finish_reason or finished[choice.index]
    assert texts == [c.message.content for c in whole.choices]
    assert finished == [c.finish_reason for c in whole.choices]


def test_a_list_of_prompts_gives_n_choices_each_in_order(client):
    prompts = ["The capital of France is", "One, two, three,"]
    got = complete(client, prompts, temperature=0, n=2)
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    singles = [complete(client, prompt, temperature=0).choices[0].text for prompt in prompts]
    assert [c.text for c in got.choices] == [singles[0], singles[0], singles[1], singles[1]]
    token_prompts = [complete(client, p, temperature=0, max_tokens=1).usage.prompt_tokens for p in prompts]
    assert got.usage.prompt_tokens == sum(token_prompts)


@pytest.mark.parametrize("stream", [False, True])
def test_echo_puts_the_prompt_before_the_answer(client, env, stream):
    prompt = "Once upon a time"
    answer = complete(client, prompt, temperature=0).choices[0].text
    ids = env[1].prompt_ids(prompt, raw=True)
    for sent, echoed in ((prompt, prompt), (ids, env[1].tokenizer.decode(ids, skip_special_tokens=False))):
        if stream:
            text = "".join(c.choices[0].text for c in complete(client, sent, temperature=0, echo=True, stream=True)
                           if c.choices)
        else:
            text = complete(client, sent, temperature=0, echo=True).choices[0].text
        assert text == echoed + answer


def test_logit_bias_forces_and_bans_tokens(client, env):
    tokenizer = env[1].tokenizer
    forced = tokenizer.encode(" banana", add_special_tokens=False)
    assert len(forced) == 1
    got = complete(client, "My favourite fruit is", temperature=0, logit_bias={str(forced[0]): 100})
    assert got.choices[0].text == " banana" * MAX_TOKENS
    first = complete(client, "My favourite fruit is", temperature=0, max_tokens=1, logprobs=0)
    [first_id] = tokenizer.encode(first.choices[0].text, add_special_tokens=False)
    banned = complete(client, "My favourite fruit is", temperature=0, max_tokens=1, logit_bias={str(first_id): -100})
    assert banned.choices[0].text != first.choices[0].text
