"""/metrics: counters move by exactly what was served; a client that leaves mid-answer is aborted and
its KV blocks return to the pool; a shared prompt prefix is served from the prefix cache."""

from __future__ import annotations

import httpx
import openai
import pytest
from live_server import MODEL_ID, make_llm, running_server, scrape, service_for, wait_for

CHAT = "/v1/chat/completions"
LONG = 400  # tokens asked of a request the client abandons long before it could finish


@pytest.fixture(scope="module")
def base_url(loaded):
    with running_server(service_for(make_llm(loaded, max_num_seqs=4))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def long_request(**fields) -> dict:
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Write a long essay about rivers."}],
        "max_tokens": LONG,
        "ignore_eos": True,
        "temperature": 0,
        **fields,
    }


def test_counters_and_histograms_follow_a_request(base_url, client):
    before = scrape(base_url)
    answer = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Hi there"}],
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    after = scrape(base_url)
    usage = answer.usage
    assert delta(before, after, "luodi_prompt_tokens_total") == usage.prompt_tokens
    assert delta(before, after, "luodi_generation_tokens_total") == usage.completion_tokens == 5
    assert delta(before, after, 'luodi_requests_finished_total{finish_reason="length"}') == 1
    assert delta(before, after, 'luodi_http_requests_total{route="/v1/chat/completions",status="200"}') == 1
    assert delta(before, after, "luodi_time_to_first_token_seconds_count") == 1
    assert delta(before, after, "luodi_time_per_output_token_seconds_count") == 1
    assert delta(before, after, "luodi_prefix_cache_queries_tokens_total") == usage.prompt_tokens
    assert after["luodi_num_requests_running"] == after["luodi_num_requests_waiting"] == 0
    assert after["luodi_kv_blocks_used"] == 0
    assert after["luodi_kv_blocks_used"] + after["luodi_kv_blocks_free"] == after["luodi_kv_blocks_total"] > 0
    assert 0 <= after["luodi_prefix_cache_hit_rate"] <= 1


def test_errors_are_counted_by_status(base_url):
    before = scrape(base_url)
    httpx.post(base_url + CHAT, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    httpx.get(base_url + "/no/such/route")
    after = scrape(base_url)
    assert delta(before, after, 'luodi_http_requests_total{route="/v1/chat/completions",status="404"}') == 1
    assert delta(before, after, 'luodi_http_requests_total{route="other",status="404"}') == 1


def test_a_disconnected_stream_frees_its_blocks(base_url):
    before = scrape(base_url)
    with httpx.stream("POST", base_url + CHAT, json=long_request(stream=True), timeout=60) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if '"content":"' in line and '"content":""' not in line)
        assert first  # the first generated text has arrived
        during = scrape(base_url)
        assert during["luodi_num_requests_running"] == 1 and during["luodi_kv_blocks_used"] > 0
    # The connection is closed: the request must be aborted, and its blocks back in the pool.
    wait_for(lambda: scrape(base_url)["luodi_kv_blocks_used"] == 0, what="the blocks to return")
    after = scrape(base_url)
    assert after["luodi_num_requests_running"] == 0 and after["luodi_num_requests_admitted"] == 0
    assert after["luodi_kv_blocks_free"] == after["luodi_kv_blocks_total"]
    assert delta(before, after, 'luodi_requests_finished_total{finish_reason="abort"}') == 1
    assert delta(before, after, "luodi_generation_tokens_total") < LONG


def test_a_client_that_gives_up_on_a_non_streamed_answer_frees_its_blocks(base_url):
    before = scrape(base_url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base_url + CHAT, json=long_request(), timeout=httpx.Timeout(60, read=1.0))
    wait_for(
        lambda: delta(before, scrape(base_url), 'luodi_requests_finished_total{finish_reason="abort"}') == 1,
        what="the request to be aborted",
    )
    wait_for(lambda: scrape(base_url)["luodi_kv_blocks_used"] == 0, what="the blocks to return")
    assert delta(before, scrape(base_url), "luodi_generation_tokens_total") < LONG


def test_a_shared_system_prompt_hits_the_prefix_cache(base_url, client):
    system = "You are a careful assistant for a hardware shop. " * 12  # several KV blocks long

    def ask(question: str):
        return client.chat.completions.create(
            model=MODEL_ID,
            max_tokens=2,
            temperature=0,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        )

    first = ask("Do you sell hammers?")
    before = scrape(base_url)
    second = ask("What about nails?")
    after = scrape(base_url)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens // 2  # the whole system prompt, in full blocks
    assert delta(before, after, "luodi_prefix_cache_hits_tokens_total") == cached
