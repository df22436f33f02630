"""Tool calling over the OpenAI API, driven by real clients: openai, LangChain, LlamaIndex.

Oracles: `jsonschema` validates every call's arguments against its tool's parameters; each client's
own parsing of calls (streamed deltas assembled by LangChain, LlamaIndex's tool selections, a
pydantic model from `with_structured_output`); streamed deltas concatenated equal the non-streamed
answer; and with no call, the answer equals the one the same prompt gets without any grammar.

SmolLM2's template knows nothing of tools, so these run Luodi's generic format (the tools in the
system prompt, `<tool_call>` blocks). This 135M model never calls a tool unprompted under `auto`:
the tests that need it to favour the trigger's tokens with `logit_bias`, then the grammar takes over.
"""

from __future__ import annotations

import dataclasses
import json

import httpx
import jsonschema
import openai
import pytest
from live_server import MODEL_ID, make_llm, running_server, service_for
from pydantic import BaseModel, Field

from luodi.toolcall import detect_format
from luodi.toolcall.formats import generic_tools_prompt
from luodi.toolcall.tools import parse_tools
from test_errors import assert_error

CHAT = "/v1/chat/completions"
MAX_TOKENS = 60
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}},
                   "required": ["timezone"]}}}
TOOLS = [WEATHER, TIME]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED_TIME = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def llm(loaded):
    return make_llm(loaded, max_num_seqs=8)


@pytest.fixture(scope="module")
def base_url(llm):
    with running_server(service_for(llm)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def trigger_bias(llm):
    """logit_bias favouring the tokens of the format's trigger: the model then opens a call itself."""
    trigger = detect_format(llm.tokenizer.chat_template).trigger
    return {str(t): 10 for t in llm.tokenizer.encode(trigger, add_special_tokens=False)}


def ask(client, **fields):
    request = {"model": MODEL_ID, "messages": QUESTION, "tools": TOOLS, "temperature": 0,
               "max_tokens": MAX_TOKENS, **fields}
    return client.chat.completions.create(**request)


def assert_valid(calls) -> None:
    """Each call names a tool, its arguments validate against the tool's parameters, ids are OpenAI's."""
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


def whole(response) -> list[tuple[str, list[tuple[str, str]], str]]:
    """Each choice as (content, [(name, arguments)], finish_reason)."""
    out = []
    for choice in sorted(response.choices, key=lambda c: c.index):
        assert_valid(choice.message.tool_calls or [])
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        out.append((choice.message.content or "", calls, choice.finish_reason))
    return out


def streamed(chunks) -> list[tuple[str, list[tuple[str, str]], str]]:
    """The same, assembled from streamed deltas as OpenAI documents them: a call's first delta brings
    its id, type and name, the later ones only argument text."""
    content: dict[int, str] = {}
    calls: dict[int, dict[int, dict]] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            content[choice.index] = content.get(choice.index, "") + (choice.delta.content or "")
            for delta in choice.delta.tool_calls or []:
                made = calls.setdefault(choice.index, {})
                if delta.index not in made:
                    assert delta.id.startswith("call_") and delta.type == "function" and delta.function.name
                    made[delta.index] = {"name": delta.function.name, "arguments": ""}
                else:
                    assert delta.id is None and delta.function.name is None
                made[delta.index]["arguments"] += delta.function.arguments or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    out = []
    for index in sorted(content):
        made = [calls.get(index, {})[i] for i in sorted(calls.get(index, {}))]
        for call in made:
            jsonschema.validate(json.loads(call["arguments"]), PARAMETERS[call["name"]])
        out.append((content[index], [(c["name"], c["arguments"]) for c in made], finish[index]))
    return out


# -- tool_choice: required, named, auto, none ---------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", NAMED_TIME], ids=["required", "named"])
def test_required_and_named_choices_make_one_valid_call(client, choice):
    response = ask(client, tool_choice=choice, parallel_tool_calls=False)
    message = response.choices[0].message
    assert response.choices[0].finish_reason == "tool_calls"
    assert message.content is None and len(message.tool_calls) == 1
    assert_valid(message.tool_calls)
    if choice == NAMED_TIME:
        assert message.tool_calls[0].function.name == "get_time"


@pytest.mark.parametrize(("fields", "n"), [
    ({"tool_choice": "required"}, 1),  # parallel: the small model repeats calls until max_tokens
    ({"tool_choice": NAMED_TIME}, 1),
    ({"tool_choice": "required", "parallel_tool_calls": False, "temperature": 0.8, "seed": 3}, 3),
    ({"tool_choice": "auto", "parallel_tool_calls": False, "trigger": True}, 1),
], ids=["parallel", "named", "sampled-n3", "auto"])
def test_streamed_deltas_concatenate_to_the_whole_answer(client, trigger_bias, fields, n):
    fields = {k: v for k, v in fields.items() if k != "trigger"} | (
        {"logit_bias": trigger_bias} if fields.get("trigger") else {})
    answers = whole(ask(client, n=n, **fields))
    assert answers == streamed(ask(client, n=n, stream=True, **fields))
    assert all(calls for _, calls, _ in answers)


def test_parallel_calls_are_each_valid_and_a_cut_one_is_content(client, llm):
    response = ask(client, tool_choice="required", max_tokens=90)
    (content, calls, finish), = whole(response)
    assert len(calls) >= 2
    if finish == "length":  # the call max_tokens cut is text (what of it was written), never a broken call
        fmt = detect_format(llm.tokenizer.chat_template)
        opening = fmt.separator + fmt.call_open
        assert content[:len(opening)] == opening[:len(content)]
    else:
        assert finish == "tool_calls" and content == ""


def test_auto_switches_into_an_enforced_call_at_the_trigger(client, trigger_bias):
    response = ask(client, tool_choice="auto", parallel_tool_calls=False, logit_bias=trigger_bias)
    message = response.choices[0].message
    assert response.choices[0].finish_reason == "tool_calls" and len(message.tool_calls) == 1
    assert_valid(message.tool_calls)


def test_auto_text_is_what_the_prompt_gives_without_a_grammar(client):
    """No trigger, no call: the grammar leaves free text as the model writes it unconstrained."""
    tools = parse_tools([(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
                         for t in TOOLS])
    auto = ask(client, tool_choice="auto", max_tokens=24)
    plain = client.chat.completions.create(
        model=MODEL_ID, temperature=0, max_tokens=24,
        messages=[{"role": "system", "content": generic_tools_prompt(tools)}, *QUESTION])
    assert auto.usage.prompt_tokens == plain.usage.prompt_tokens  # the very same prompt
    assert auto.choices[0].message.tool_calls is None
    assert auto.choices[0].message.content == plain.choices[0].message.content
    assert auto.choices[0].finish_reason == plain.choices[0].finish_reason


def test_tool_choice_none_answers_as_if_there_were_no_tools(client):
    none = ask(client, tool_choice="none", max_tokens=16)
    plain = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, temperature=0, max_tokens=16)
    assert none.choices[0].message.tool_calls is None
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert none.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_cut_by_max_tokens_is_content_never_a_broken_call(client, stream):
    fields = {"tool_choice": "required", "max_tokens": 6}
    answer = streamed(ask(client, stream=True, **fields)) if stream else whole(ask(client, **fields))
    (content, calls, finish), = answer
    assert finish == "length" and calls == [] and content.startswith("<tool_call>")


def test_wire_format_of_calls_and_of_plain_answers(base_url):
    body = {"model": MODEL_ID, "messages": QUESTION, "tools": TOOLS, "tool_choice": "required",
            "parallel_tool_calls": False, "temperature": 0, "max_tokens": MAX_TOKENS}
    message = httpx.post(base_url + CHAT, json=body, timeout=300).json()["choices"][0]["message"]
    assert message["content"] is None and set(message) == {"role", "content", "tool_calls"}
    call = message["tool_calls"][0]
    assert set(call) == {"id", "type", "function"} and isinstance(call["function"]["arguments"], str)
    plain = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 2}
    assert "tool_calls" not in httpx.post(base_url + CHAT, json=plain, timeout=300).json()["choices"][0]["message"]
    with httpx.stream("POST", base_url + CHAT, json={**plain, "stream": True}, timeout=300) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert all("usage" not in event for event in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0]["delta"] == {} and events[-1]["choices"][0]["finish_reason"] == "length"


# -- an agent loop: call -> tool result -> call -> tool result -> answer ---------------------------------


def run_tool(name: str, arguments: dict) -> str:
    if name == "get_weather":
        return f"Sunny and 24 degrees in {arguments['city']}."
    return f"It is 10:30 in {arguments['timezone']}."


def test_agent_loop_of_two_rounds(client):
    messages = [{"role": "user", "content": "What is the weather in Paris, and what time is it there?"}]
    prompt_sizes = []
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, NAMED_TIME):
        response = ask(client, messages=messages, tool_choice=choice, parallel_tool_calls=False)
        message = response.choices[0].message
        assert response.choices[0].finish_reason == "tool_calls"
        assert_valid(message.tool_calls)
        messages.append(message)  # the client's own message object goes back as history
        for call in message.tool_calls:
            result = run_tool(call.function.name, json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        prompt_sizes.append(response.usage.prompt_tokens)
    assert prompt_sizes[1] > prompt_sizes[0]  # the first round's call and result joined the prompt
    final = ask(client, messages=messages, tool_choice="none", max_tokens=32)
    assert final.choices[0].message.content and final.choices[0].message.tool_calls is None


# -- LangChain and LlamaIndex ---------------------------------------------------------------------------


class WeatherArgs(BaseModel):
    city: str = Field(max_length=20, description="The city")


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny and 24 degrees in {city}."


def test_langchain_bind_tools_then_a_tool_message_then_the_answer(base_url):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import StructuredTool
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langchain_openai import ChatOpenAI

    tool = StructuredTool.from_function(get_weather, args_schema=WeatherArgs)
    schema = convert_to_openai_tool(tool)["function"]["parameters"]
    model = ChatOpenAI(base_url=base_url + "/v1", api_key="unused", model=MODEL_ID, temperature=0,
                       max_tokens=MAX_TOKENS, max_retries=0)
    forced = model.bind_tools([tool], tool_choice="get_weather", parallel_tool_calls=False)
    question = HumanMessage("What is the weather in Paris?")
    call = forced.invoke([question])
    assert [c["name"] for c in call.tool_calls] == ["get_weather"] and not call.invalid_tool_calls
    jsonschema.validate(call.tool_calls[0]["args"], schema)
    chunks = list(forced.stream([question]))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(c["name"], c["args"]) for c in call.tool_calls]
    result = ToolMessage(tool.invoke(call.tool_calls[0]["args"]), tool_call_id=call.tool_calls[0]["id"])
    answer = model.bind_tools([tool], tool_choice="none").invoke([question, call, result])
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls


class Meeting(BaseModel):
    title: str = Field(max_length=30)
    minutes: int = Field(ge=1, le=240)


def test_langchain_with_structured_output_function_calling(base_url):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(base_url=base_url + "/v1", api_key="unused", model=MODEL_ID, temperature=0,
                       max_tokens=MAX_TOKENS, max_retries=0)
    result = model.with_structured_output(Meeting, method="function_calling").invoke(
        "Carol and Dan met for an hour to plan the release.")
    assert isinstance(result, Meeting)


def test_llamaindex_openai_like_chat_with_tools(base_url):
    pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=MODEL_ID, api_base=base_url + "/v1", api_key="unused", is_chat_model=True,
                     is_function_calling_model=True, context_window=2048, max_tokens=MAX_TOKENS, temperature=0,
                     max_retries=0)
    tool = FunctionTool.from_defaults(fn=get_weather, fn_schema=WeatherArgs)
    response = llm.chat_with_tools([tool], user_msg="What is the weather in Paris?", tool_required=True)
    selections = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert [s.tool_name for s in selections] == ["get_weather"]
    jsonschema.validate(selections[0].tool_kwargs, tool.metadata.get_parameters_dict())


# -- a chat template that knows tools (Hermes, as Qwen2.5's) -----------------------------------------

# Qwen2.5's template, cut to what matters here: the tools as JSON in the system turn, calls as
# <tool_call> blocks with the arguments as a mapping, results as <tool_response> in user turns.
HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
You are a helpful assistant.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.tool_calls %}<|im_start|>assistant
{{ message.content }}{% for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def hermes(loaded):
    """A client of a server whose model's template knows tools, and transformers' tokenizer with it."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = loaded.tokenizer.with_chat_template(HERMES_TEMPLATE)
    assert detect_format(HERMES_TEMPLATE).name == "hermes"
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend)
    hf.chat_template = HERMES_TEMPLATE
    with running_server(service_for(make_llm(dataclasses.replace(loaded, tokenizer=tokenizer), max_num_seqs=4))) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600), hf


def hf_prompt_tokens(hf, messages: list[dict], tools: list[dict] | None) -> int:
    """The prompt's length as transformers renders it (tool call arguments as mappings, its convention)."""
    def hf_message(m: dict) -> dict:
        calls = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                 for c in m.get("tool_calls") or []]
        return {**m, "tool_calls": calls} if calls else m

    return len(hf.apply_chat_template([hf_message(m) for m in messages], tools=tools, add_generation_prompt=True,
                                      tokenize=True, return_dict=False))


def test_a_template_that_knows_tools_renders_them_calls_and_results(hermes):
    client, hf = hermes
    call = ask(client, tool_choice="required", parallel_tool_calls=False)
    assert call.choices[0].finish_reason == "tool_calls"
    assert call.usage.prompt_tokens == hf_prompt_tokens(hf, QUESTION, TOOLS)
    assert streamed(ask(client, tool_choice="required", parallel_tool_calls=False, stream=True)) == whole(call)
    made = call.choices[0].message.tool_calls[0]
    history = [*QUESTION, call.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": made.id, "content": "Sunny and 24 degrees."}]
    answer = ask(client, messages=history, max_tokens=16, tool_choice="auto")
    assert answer.usage.prompt_tokens == hf_prompt_tokens(hf, history, TOOLS)
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls
    assert_valid(answer.choices[0].message.tool_calls or [])


# -- bad input: 400s naming the problem -------------------------------------------------------------


def tool(parameters=None, name="f", description="") -> dict:
    function = {"name": name, "description": description}
    return {"type": "function", "function": function | ({"parameters": parameters} if parameters else {})}


CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}


@pytest.mark.parametrize(("fields", "param", "needle"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope'"),
    ({"tool_choice": "sometimes"}, "tool_choice", "'sometimes'"),
    ({"tool_choice": {"type": "function"}}, "tool_choice", '"required"'),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", "no tools"),
    ({"tools": [tool({"type": "string"})]}, "tools.0.function.parameters", "type object"),
    ({"tools": [tool({"type": "object", "properties": {"a": {"type": "nonsense"}}})]},
     "tools.0.function.parameters", "not a valid JSON Schema"),
    ({"tools": [tool(name="bad name!")]}, "tools.0.function.name", "bad name!"),
    ({"tools": [tool(), tool()]}, "tools.1.function", "twice"),
    ({"tools": [{"type": "function"}]}, "tools.0.function", None),
    ({"tools": [tool({"type": "object", "dependentSchemas": {"a": {}}})]}, "tools", "dependentSchemas"),
    ({"tools": [tool(name=f"f{i}") for i in range(129)]}, "tools", "limit of 128"),
    ({"tools": [tool(description="x" * 100_001)]}, "tools", "over the limit"),
    ({"response_format": {"type": "json_object"}}, "tools", "response_format"),
    ({"functions": [{"name": "f"}]}, "functions", "tools"),
    ({"messages": [*QUESTION, {"role": "tool", "content": "sunny"}]}, "messages.1.tool_call_id", "tool_call_id"),
    ({"messages": [*QUESTION, CALLED, {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}]},
     "messages.2.tool_call_id", "'call_2'"),
    ({"messages": [{**QUESTION[0], "tool_calls": CALLED["tool_calls"]}]}, "messages.0.tool_calls", "assistant"),
    ({"messages": [*QUESTION, {**CALLED, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}]},
     "messages.1.tool_calls.0.function.arguments", None),
])
def test_bad_tools_choices_and_tool_messages_are_400s_naming_them(base_url, fields, param, needle):
    body = {"model": MODEL_ID, "messages": QUESTION, "tools": TOOLS, "max_tokens": 4, **fields}
    error = assert_error(httpx.post(base_url + CHAT, json=body, timeout=60), 400, param=param)
    if needle:
        assert needle in error["message"]
