"""Structured output over the OpenAI API: `response_format` and `structured_outputs`, real clients.

Oracles: `jsonschema` for every schema of `schemas.SCHEMAS` (chat and completions, streamed and
not, on SmolLM2; completions on Gemma 3, a base model without a chat template, streamed and not),
pydantic for `client.chat.completions.parse`, LangChain's own parsing for `with_structured_output`,
`re` for regex, the choice list for choice. Bad grammars must be OpenAI-shaped 400s.

Every request is greedy with a max_tokens that fits its schema, so the output is complete
("stop"); one test shows what a too-small max_tokens gives ("length", text cut).
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import openai
import pytest
from live_server import MODEL_ID, make_llm, running_server, service_for
from model_cache import pulled_model_path
from pydantic import BaseModel, Field
from schemas import SCHEMAS

from luodi.models.loader import load_model
from test_errors import assert_error

MAX_TOKENS = 160
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def llm(loaded):
    return make_llm(loaded, max_num_seqs=16)


@pytest.fixture(scope="module")
def base_url(llm):
    with running_server(service_for(llm)) as url:
        yield url


def ask(description: str) -> str:
    return f"Reply with JSON only. Give {description}."


async def structured_answer(client: openai.AsyncOpenAI, api: str, stream: bool, description: str,
                            schema: dict) -> tuple[str, str | None]:
    """(text, finish_reason) of one request for `schema` through `api` ("chat" or "completions")."""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    common = {"model": MODEL_ID, "temperature": 0, "max_tokens": MAX_TOKENS, "stream": stream}
    if api == "chat":
        response = await client.chat.completions.create(
            messages=[{"role": "user", "content": ask(description)}], response_format=fmt, **common)
    else:
        response = await client.completions.create(
            prompt=ask(description) + "\nJSON:", extra_body={"response_format": fmt}, **common)
    if not stream:
        choice = response.choices[0]
        return (choice.message.content if api == "chat" else choice.text), choice.finish_reason
    text, finish = "", None
    async for chunk in response:
        for choice in chunk.choices:
            text += (choice.delta.content or "") if api == "chat" else choice.text
            finish = choice.finish_reason or finish
    return text, finish


def check_schema_set(url: str, api: str, stream: bool, schemas=SCHEMAS) -> None:
    async def run() -> list[tuple[str, str | None]]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        return await asyncio.gather(*(structured_answer(client, api, stream, d, s) for _, d, s in schemas))

    failures = []
    for (name, _, schema), (text, finish) in zip(schemas, asyncio.run(run()), strict=True):
        try:
            assert finish == "stop", f"finish_reason {finish}"
            jsonschema.validate(json.loads(text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            failures.append(f"{name}: {str(exc).splitlines()[0]}: {text[:120]!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_every_schema_of_the_set_validates(base_url, api, stream):
    assert len(SCHEMAS) >= 40
    check_schema_set(base_url, api, stream)


class Meeting(BaseModel):
    title: str = Field(max_length=30)
    attendees: list[str] = Field(min_length=1, max_length=3)
    minutes: int = Field(ge=1, le=240)


def test_openai_parse_returns_the_pydantic_model(base_url):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.parse(
        model=MODEL_ID, temperature=0, max_tokens=MAX_TOKENS, response_format=Meeting,
        messages=[{"role": "user", "content": "Alice and Bob met for 30 minutes about the budget."}])
    message = completion.choices[0].message
    assert isinstance(message.parsed, Meeting)
    assert message.parsed == Meeting.model_validate_json(message.content)


def test_langchain_with_structured_output_json_schema(base_url):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(base_url=base_url + "/v1", api_key="unused", model=MODEL_ID, temperature=0,
                       max_tokens=MAX_TOKENS, max_retries=0)
    result = model.with_structured_output(Meeting, method="json_schema").invoke(
        "Carol and Dan met for an hour to plan the release.")
    assert isinstance(result, Meeting)


def test_json_object_gives_a_json_object(base_url):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model=MODEL_ID, temperature=0, max_tokens=MAX_TOKENS, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe a cat as a JSON object with two short fields."}])
    choice = response.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # any object is allowed, so a model may fill max_tokens; the prefix is still an object's
        assert choice.message.content.startswith("{")


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_structured_outputs_regex_choice_and_lark(base_url, api):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    cases = [
        ({"regex": r"[A-Z][a-z]{2,8}, [0-9]{4}"}, lambda t: re.fullmatch(r"[A-Z][a-z]{2,8}, [0-9]{4}", t)),
        ({"choice": ["positive", "negative", "neutral"]}, lambda t: t in ("positive", "negative", "neutral")),
        ({"grammar": 'start: "answer: " ("yes" | "no")'}, lambda t: t in ("answer: yes", "answer: no")),
    ]
    for outputs, check in cases:
        extra = {"structured_outputs": outputs}
        if api == "chat":
            response = client.chat.completions.create(
                model=MODEL_ID, temperature=0, max_tokens=40, extra_body=extra,
                messages=[{"role": "user", "content": "Is 'I love this film' positive? Answer briefly."}])
            text = response.choices[0].message.content
        else:
            response = client.completions.create(model=MODEL_ID, temperature=0, max_tokens=40, extra_body=extra,
                                                 prompt="Is 'I love this film' positive? Answer:")
            text = response.choices[0].text
        assert response.choices[0].finish_reason == "stop" and check(text), (outputs, text)


def test_completions_with_a_grammar_default_to_no_16_token_cut(base_url):
    """OpenAI's completions default max_tokens (16) is lifted when a grammar is given."""
    schema = {"type": "array", "items": {"enum": ["alpha", "beta"]}, "minItems": 8, "maxItems": 8}
    body = {"model": MODEL_ID, "prompt": "List:", "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    response = httpx.post(base_url + "/v1/completions", json=body, timeout=300).json()
    assert response["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(response["choices"][0]["text"]), schema)
    assert response["usage"]["completion_tokens"] > 16


def test_max_tokens_too_small_ends_with_length_and_cut_text(base_url):
    schema = SCHEMAS[0][2]
    body = {"model": MODEL_ID, "temperature": 0, "max_tokens": 3,
            "messages": [{"role": "user", "content": ask("a person")}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    response = httpx.post(base_url + CHAT, json=body, timeout=300).json()
    choice = response["choices"][0]
    assert choice["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice["message"]["content"])


def json_schema_format(schema: object) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"response_format": json_schema_format({"type": "frobnicate"})}, "response_format", "frobnicate"),
    ({"response_format": json_schema_format({"type": "object", "dependentSchemas": {"a": {}}})},
     "response_format", "dependentSchemas"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "needs a"),
    ({"response_format": {"type": "xml"}}, "response_format.type", None),
    ({"structured_outputs": {"regex": "a(b"}}, "structured_outputs.regex", "unclosed group"),
    ({"structured_outputs": {"grammar": "start: nothing_here"}}, "structured_outputs.grammar", "nothing_here"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "non-empty"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"regex": "a" * 100_001}}, "structured_outputs.regex", "over the limit"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "structured_outputs",
     "not both"),
])
@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
def test_bad_grammars_are_openai_shaped_400s(base_url, path, fields, param, message):
    body = {"model": MODEL_ID, "max_tokens": 4, **fields}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path == CHAT else {"prompt": "hi"})
    error = assert_error(httpx.post(base_url + path, json=body, timeout=60), 400, param=param)
    if message:
        assert message in error["message"]


def test_a_grammar_past_the_compile_time_limit_is_a_400(base_url, llm):
    backend = llm.engine.grammar_backend
    schema = {"type": "object", "properties": {f"f{i}": {"type": "string", "pattern": f"^[a-z]{{{i}}}@[0-9]+$"}
                                               for i in range(1, 150)}}
    backend.compile_timeout_s = 0.0
    try:
        body = {"model": MODEL_ID, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
                "response_format": json_schema_format(schema)}
        error = assert_error(httpx.post(base_url + CHAT, json=body, timeout=60), 400, param="response_format")
    finally:
        backend.compile_timeout_s = 10.0
    assert "did not compile within" in error["message"]


# -- Gemma 3 (a base model: completions only) ------------------------------------------------------

GEMMA_SCHEMAS = SCHEMAS[::3]  # every third schema of the set: Gemma's 262k vocabulary costs decode time


@pytest.fixture(scope="module")
def gemma_url():
    gemma = load_model(str(pulled_model_path("gemma3-270m")), dtype="float32")
    with running_server(service_for(make_llm(gemma, max_num_seqs=16))) as url:
        yield url


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_schema_subset_validates_on_gemma3(gemma_url, stream):
    check_schema_set(gemma_url, "completions", stream, GEMMA_SCHEMAS)
