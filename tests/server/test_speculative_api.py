"""`"speculative": "none" | "ngram"` per request on the OpenAI routes, through the official client.

Oracle: the same request with speculation off. A copy task must give the same text and usage with
drafts verified (the draft counters on /metrics move) as without (they stay still); a bad value
is a 400 naming the field.
"""

from __future__ import annotations

import openai
import pytest
from live_server import MODEL_ID, make_llm, running_server, scrape, service_for

TEXT = "Invoice 2291: 14 chairs, 3 desks, 2 lamps; delivery to Room 5B on Tuesday; paid by card."
DRAFTED = "luodi_spec_decode_draft_tokens_total"
ACCEPTED = "luodi_spec_decode_accepted_tokens_total"


@pytest.fixture(scope="module")
def base_url(loaded):
    with running_server(service_for(make_llm(loaded, max_num_seqs=4))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


def _counters(base_url: str) -> tuple[float, float]:
    samples = scrape(base_url)
    return samples[DRAFTED], samples[ACCEPTED]


def _chat(client: openai.OpenAI, speculative: str):
    return client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": f"Repeat exactly: {TEXT}"}], temperature=0,
        max_tokens=40, extra_body={"speculative": speculative},
    )


def test_chat_with_and_without_speculation(base_url, client):
    before = _counters(base_url)
    plain = _chat(client, "none")
    between = _counters(base_url)
    spec = _chat(client, "ngram")
    after = _counters(base_url)
    assert between == before  # "none": no draft
    assert after[0] > between[0] and after[1] > between[1]  # "ngram": drafts verified, some accepted
    assert spec.choices[0].message.content == plain.choices[0].message.content
    assert spec.usage.completion_tokens == plain.usage.completion_tokens
    assert "2291" in spec.choices[0].message.content  # it did copy


@pytest.mark.parametrize("stream", [False, True])
def test_completions_with_and_without_speculation(client, stream):
    prompt = f"{TEXT}\n{TEXT}\n{TEXT[:30]}"

    def complete(speculative: str) -> str:
        response = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=30, temperature=0,
                                             stream=stream, extra_body={"speculative": speculative})
        return "".join(c.choices[0].text for c in response) if stream else response.choices[0].text

    assert complete("ngram") == complete("none")


def test_an_unknown_method_is_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, "eagle")
    error = info.value.body
    assert error["param"] == "speculative"
    assert "'eagle'" in error["message"] and "none, ngram" in error["message"]
