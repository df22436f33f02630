"""The prefix cache is partitioned by tenant: a caller's `cached_tokens` (and so its time to first
token) counts only blocks its own key computed, never another key's — the side channel that let
one tenant test guesses of another's prompt."""

from __future__ import annotations

import openai
import pytest
from live_server import MODEL_ID, make_llm, running_server, service_for

from luodi.server.auth import add_key, remove_key

# Long enough for several full blocks (8 tokens each): what a grounded KB prompt shares.
SECRET = "Internal HR record. Employee: Li Wei. Department: finance. Annual salary: 412,000 CNY."


def cached_tokens(client: openai.OpenAI, system: str, **extra) -> int:
    reply = client.chat.completions.create(
        model=MODEL_ID, max_tokens=1, temperature=0, extra_body=extra or None,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Summarize."}],
    )
    return reply.usage.prompt_tokens_details.cached_tokens


@pytest.fixture(scope="module")
def tenants(loaded, tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "api-keys.json"
    key_a, key_b = add_key(path, "tenant-a"), add_key(path, "tenant-b")
    with running_server(service_for(make_llm(loaded), api_keys_file=path)) as url:
        yield (openai.OpenAI(base_url=url + "/v1", api_key=key_a, max_retries=0),
               openai.OpenAI(base_url=url + "/v1", api_key=key_b, max_retries=0), path, url)


def test_another_tenant_never_hits_a_tenants_cached_prefix(tenants):
    a, b, *_ = tenants
    assert cached_tokens(a, SECRET) == 0  # A's prompt is now cached
    assert cached_tokens(b, SECRET) == 0  # B's exact guess finds nothing of A's
    assert cached_tokens(a, SECRET) > 0  # while A's repeat hits its own blocks
    assert cached_tokens(b, SECRET) > 0  # and B, having computed it itself, hits its own


def test_a_request_cache_salt_narrows_the_callers_partition(tenants):
    a, *_ = tenants
    prompt = "Quarterly sales plan, draft two. " + SECRET  # no block in common with the first test
    assert cached_tokens(a, prompt) == 0
    assert cached_tokens(a, prompt, cache_salt="session-1") == 0  # a salt of its own: not shared
    assert cached_tokens(a, prompt, cache_salt="session-1") > 0
    assert cached_tokens(a, prompt) > 0


def test_a_key_readded_under_the_same_name_is_another_tenant(tenants):
    *_, path, url = tenants
    prompt = "Board minutes, not for circulation. " + SECRET  # no block in common with the tests above
    old = openai.OpenAI(base_url=url + "/v1", api_key=add_key(path, "tenant-c"), max_retries=0)
    assert cached_tokens(old, prompt) == 0
    remove_key(path, "tenant-c")
    new = openai.OpenAI(base_url=url + "/v1", api_key=add_key(path, "tenant-c"), max_retries=0)
    assert cached_tokens(new, prompt) == 0  # the old key's blocks are not the new key's
    assert cached_tokens(new, prompt) > 0


def test_without_keys_all_callers_share_one_partition(loaded):
    with running_server(service_for(make_llm(loaded))) as url:
        first = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        second = openai.OpenAI(base_url=url + "/v1", api_key="other", max_retries=0)
        assert cached_tokens(first, SECRET) == 0
        assert cached_tokens(second, SECRET) > 0
