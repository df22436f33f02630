"""Call formats: written → parsed back, whole and streamed; templates declare their format;
history rendering; the grammar of each format compiles and holds the model to the tools."""

import json

import pytest

from luodi.loading.tokenizer import Tokenizer
from luodi.toolcall import (FORMATS, ToolCallParser, ToolCalling, ToolChoice, ToolError, check_tool_choice,
                            detect_format, parse_calls, parse_tools, render_messages, split_answer, tool_call_lark,
                            tools_from_definitions)

WEATHER = ("get_weather", "Weather in a city",
           {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"], "additionalProperties": False})
TIME = ("get_time", None, None)
TOOLS = parse_tools([WEATHER, TIME])
# Arguments chosen to trip a naive parser: braces and quotes inside strings, non-ASCII text.
CALLS = [("get_weather", '{"city":"Pa}r\\"is {x}","days":2}'), ("get_time", "{}"), ("get_weather", '{"city":"北京"}')]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_written_calls_parse_back(name):
    fmt = FORMATS[name]
    calls = CALLS[:1] if fmt.max_calls == 1 else CALLS
    content, parsed = parse_calls(fmt, "Let me look. " + fmt.block_text(calls))
    assert content == "Let me look. "
    assert [(c.name, c.arguments) for c in parsed] == calls
    assert all(c.is_complete for c in parsed) and len({c.id for c in parsed}) == len(parsed)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_streamed_deltas_concatenate_to_the_whole_answer(name):
    fmt = FORMATS[name]
    calls = CALLS[:1] if fmt.max_calls == 1 else CALLS
    text = "Sure " + fmt.block_text(calls)
    parser = ToolCallParser(fmt)
    content, names, arguments = "", {}, {}
    for piece in [text[i:i + 3] for i in range(0, len(text), 3)] + [None]:
        new_content, deltas = parser.finish() if piece is None else parser.feed(piece)
        content += new_content
        for delta in deltas:
            if delta.name is not None:
                assert delta.index not in names  # the name is sent once
                names[delta.index] = delta.name
            arguments[delta.index] = arguments.get(delta.index, "") + delta.arguments
    assert content == "Sure "
    assert [(names[i], arguments[i]) for i in sorted(names)] == calls
    assert [(c.name, c.arguments) for c in parse_calls(fmt, text)[1]] == calls


def test_text_that_only_starts_like_a_trigger_is_content():
    parser = ToolCallParser(FORMATS["hermes"])
    assert parser.feed("a <tool_") == ("a ", [])  # held back: it may become a call
    assert parser.finish() == ("<tool_", [])


@pytest.mark.parametrize("template,name", [
    ("{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>\n", "hermes"),
    ("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", "mistral"),
    ('<|start_header_id|>{% if tools %}{"name": "x", "parameters": {}}{% endif %}', "llama3"),
    ("{% for message in messages %}{{ message['content'] }}{% endfor %}", "generic"),
    (None, "generic"),
])
def test_the_template_declares_its_format(template, name):
    assert detect_format(template).name == name


def test_generic_history_puts_tools_in_the_system_prompt_and_results_in_user_turns():
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    messages, tools_variable = render_messages(FORMATS["generic"], history, TOOLS)
    assert tools_variable is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert '"name": "get_weather"' in messages[0]["content"]
    assert messages[2]["content"] == FORMATS["generic"].block_text([("get_weather", '{"city":"Paris"}')])
    response = json.loads(messages[3]["content"].split("\n")[1])
    assert response == {"name": "get_weather", "content": "sunny"}


def test_a_template_with_tools_gets_them_and_the_calls_as_mappings():
    template = ("{% for t in tools %}{{ t.function.name }};{% endfor %}{% for m in messages %}"
                "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.arguments | tojson }}</tool_call>"
                "{% endfor %}{{ m.content }}|{% endfor %}")
    history = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}}]}]
    messages, tools_variable = render_messages(detect_format(template), history, TOOLS)
    assert [t["function"]["name"] for t in tools_variable] == ["get_weather", "get_time"]
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"tz": "UTC"}


def test_bad_tools_and_choices_are_refused_naming_them():
    with pytest.raises(ToolError, match="not a valid JSON Schema") as bad:
        parse_tools([("f", None, {"type": "object", "properties": {"a": {"type": "nonsense"}}})])
    assert bad.value.param == "tools.0.function.parameters"
    with pytest.raises(ToolError, match="name"):
        parse_tools([("bad name!", None, None)])
    with pytest.raises(ToolError, match="'nope'") as unknown:
        check_tool_choice(ToolChoice("required", "nope"), TOOLS)
    assert unknown.value.param == "tool_choice"


# -- grammars, through llguidance and the bundled model's tokenizer ----------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from tests.model_cache import pulled_model_path

    llg = pytest.importorskip("llguidance")
    path = pulled_model_path("smollm2-135m-instruct")
    tok = _gguf_tokenizer(path)
    return tok, llg.LLTokenizer(tok.backend.to_str(), n_vocab=tok.vocab_size, eos_token=sorted(tok.eos_token_ids))


def _gguf_tokenizer(path):
    from luodi.loading.gguf import GGUFFile

    files = sorted(path.glob("*.gguf")) if path.is_dir() else [path]
    return Tokenizer.from_gguf(GGUFFile(files[0]))


def _accepts(tokenizer, lark, text):
    import llguidance

    tok, ll_tokenizer = tokenizer
    matcher = llguidance.LLMatcher(ll_tokenizer, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(tok.encode(text, add_special_tokens=False)) and matcher.is_accepting()


@pytest.mark.parametrize("name", ["hermes", "generic", "llama3"])
def test_required_grammar_takes_exactly_valid_calls(tokenizer, name):
    fmt = FORMATS[name]
    lark = tool_call_lark(fmt, TOOLS, ToolChoice("required"))
    assert _accepts(tokenizer, lark, fmt.block_text([("get_weather", '{"city":"Paris","days":2}')]))
    assert not _accepts(tokenizer, lark, fmt.block_text([("get_weather", '{"days":2}')]))  # city required
    assert not _accepts(tokenizer, lark, fmt.block_text([("get_weather", '{"city":"P","days":0}')]))  # minimum
    assert not _accepts(tokenizer, lark, fmt.block_text([("send_mail", "{}")]))  # not a tool
    assert not _accepts(tokenizer, lark, "Hello")  # required: a call, not text


def test_named_and_single_call_grammars(tokenizer):
    fmt = FORMATS["hermes"]
    named = tool_call_lark(fmt, TOOLS, ToolChoice("required", "get_time"))
    assert _accepts(tokenizer, named, fmt.block_text([("get_time", "{}")]))
    assert not _accepts(tokenizer, named, fmt.block_text([("get_weather", '{"city":"P"}')]))
    two = fmt.block_text([("get_time", "{}"), ("get_time", "{}")])
    assert _accepts(tokenizer, tool_call_lark(fmt, TOOLS, ToolChoice("required")), two)
    assert not _accepts(tokenizer, tool_call_lark(fmt, TOOLS, ToolChoice("required"), parallel=False), two)


def test_auto_grammar_takes_text_or_a_call_after_the_trigger(tokenizer):
    fmt = FORMATS["generic"]
    lark = tool_call_lark(fmt, TOOLS, ToolChoice("auto"))
    assert _accepts(tokenizer, lark, "It is sunny, no tool needed.")
    assert _accepts(tokenizer, lark, "Checking. " + fmt.block_text([("get_time", "{}")]))
    assert not _accepts(tokenizer, lark, "Checking. " + fmt.block_text([("get_weather", '{"town":"P"}')]))
    assert tool_call_lark(fmt, TOOLS, ToolChoice("none")) is None


# -- calls checked against the tools: a broken or invalid call is text, never a call ------------------


def _streamed(fmt, tools, text, size=4):
    """(content, [(name, arguments)]) as the stream parser sends them, fed `size` characters at a time."""
    parser = ToolCallParser(fmt, tools)
    content, names, arguments = "", {}, {}
    for piece in [text[i:i + size] for i in range(0, len(text), size)] + [None]:
        new_content, deltas = parser.finish() if piece is None else parser.feed(piece)
        content += new_content
        for delta in deltas:
            names.setdefault(delta.index, delta.name)
            arguments[delta.index] = arguments.get(delta.index, "") + delta.arguments
    return content, [(names[i], arguments[i]) for i in sorted(names)]


def _whole(fmt, tools, text):
    content, calls = split_answer(fmt, tools, text)
    return content, [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_cut_call_is_content_streamed_or_whole(name):
    fmt = FORMATS[name]
    calls = CALLS[:1] if fmt.max_calls == 1 else CALLS[:2]
    whole = "Hm. " + fmt.block_text(calls)
    for cut in range(len("Hm. ") + 1, len(whole) - len(fmt.block_close)):
        text = whole[:cut]
        content, made = _whole(fmt, TOOLS, text)
        assert _streamed(fmt, TOOLS, text) == (content, made)
        # The complete calls are calls; the text after them (all of it, if none) is content.
        assert made == calls[:len(made)]
        sent = len("Hm. " + fmt.block_open + fmt.separator.join(fmt.call_text(n, a) for n, a in made))
        assert content == (text if not made else "Hm. " + text[sent:])
    assert _whole(fmt, TOOLS, whole) == ("Hm. ", calls) == _streamed(fmt, TOOLS, whole)


@pytest.mark.parametrize(("calls", "valid"), [
    ([("get_weather", '{"city":"Paris","days":2}')], 1),
    ([("get_weather", '{"days":2}')], 0),  # city is required
    ([("get_weather", '{"city":"Paris","days":0}')], 0),  # days >= 1
    ([("send_mail", "{}")], 0),  # not a tool
    ([("get_time", "{}"), ("get_weather", '{"town":"P"}'), ("get_time", "{}")], 1),  # from the bad one on: text
])
def test_calls_must_validate_against_their_tool(calls, valid):
    fmt = FORMATS["hermes"]
    text = fmt.block_text(calls)
    content, made = _whole(fmt, TOOLS, text)
    assert made == calls[:valid] and _streamed(fmt, TOOLS, text) == (content, made)
    skipped = fmt.block_text(calls[:valid])
    assert content == ("" if valid == len(calls) else text[len(skipped):])


def test_tools_from_openai_definitions():
    definitions = [{"type": "function", "function": {"name": WEATHER[0], "description": WEATHER[1],
                                                     "parameters": WEATHER[2]}},
                   {"type": "function", "function": {"name": "get_time"}}]
    assert tools_from_definitions(definitions) == TOOLS
    for bad in ({"type": "function"}, [{"type": "retrieval", "function": {"name": "x"}}], [{"function": "x"}]):
        with pytest.raises(ToolError, match="function"):
            tools_from_definitions(bad)


def test_tool_choice_none_renders_no_tools_and_parses_nothing():
    calling = ToolCalling(FORMATS["generic"], tuple(TOOLS), ToolChoice("none"))
    messages, _ = calling.render([{"role": "user", "content": "hi"}])
    assert messages == [{"role": "user", "content": "hi"}]
    text = FORMATS["generic"].block_text(CALLS[:1])
    assert calling.grammar() is None and calling.parser() is None and calling.split(text) == (text, [])


def test_objects_that_list_properties_are_closed_in_the_grammar(tokenizer):
    open_tool = parse_tools([("note", None, {"type": "object", "properties": {"text": {"type": "string"}},
                                             "required": ["text"]})])
    fmt = FORMATS["hermes"]
    lark = tool_call_lark(fmt, open_tool, ToolChoice("required"))
    assert _accepts(tokenizer, lark, fmt.block_text([("note", '{"text":"hi"}')]))
    assert not _accepts(tokenizer, lark, fmt.block_text([("note", '{"text":"hi","more":{"a":1}}')]))


def test_parameters_without_a_type_are_an_object(tokenizer):
    untyped = parse_tools([("f", None, {"properties": {"a": {"type": "integer"}}})])
    assert untyped[0].parameters["type"] == "object"
    lark = tool_call_lark(FORMATS["hermes"], untyped, ToolChoice("required"))
    assert _accepts(tokenizer, lark, FORMATS["hermes"].block_text([("f", '{"a":1}')]))
    assert not _accepts(tokenizer, lark, FORMATS["hermes"].block_text([("f", '"text"')]))


def test_closed_objects_keeps_what_the_schema_says():
    from luodi.toolcall.grammar import closed_objects

    point = {"type": "object", "properties": {"x": {"type": "number"}}}
    schema = {"type": "object", "properties": {"at": point, "tags": {"type": "object"}},
              "$defs": {"P": point}, "allOf": [point],
              "anyOf": [point, {"type": "object", "properties": {}, "additionalProperties": True}]}
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False and closed["properties"]["at"]["additionalProperties"] is False
    assert closed["$defs"]["P"]["additionalProperties"] is False and closed["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["tags"]  # lists no properties: any keys
    assert closed["allOf"] == [point] and closed["anyOf"][1]["additionalProperties"] is True
    assert "additionalProperties" not in point  # the tool's own schema is not changed
