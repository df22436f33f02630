"""`luodi chat --tools FILE`: the model's calls come out as JSON lines that validate; bad files are one-line errors."""

from __future__ import annotations

import json

import jsonschema
import pytest
from test_cli import SMOLLM2, assert_one_line_error, luodi

from model_cache import pulled_model_path

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}


@pytest.fixture(scope="module", autouse=True)
def smollm2():
    return pulled_model_path(SMOLLM2)


@pytest.fixture
def tools_file(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([WEATHER]))
    return path


def test_calls_print_as_json_lines_that_validate(tools_file):
    result = luodi("chat", "-t", "0", "-n", "60", "--tools", str(tools_file), "--tool-choice", "get_weather",
                   stdin="What is the weather in Paris?\nAnd in Rome?\n")
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(calls) == 2 and len({c["id"] for c in calls}) == 2  # one call per turn
    for call in calls:
        assert call["name"] == "get_weather" and call["id"].startswith("call_")
        jsonschema.validate(call["arguments"], WEATHER["function"]["parameters"])


@pytest.mark.parametrize(("content", "args", "needles"), [
    ("not json", (), ("is not JSON",)),
    (json.dumps({"name": "f"}), (), ("JSON list",)),
    (json.dumps([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]), (),
     ("'f'", "type object")),
    (json.dumps([WEATHER]), ("--tool-choice", "send_mail"), ("'send_mail'", "get_weather")),
])
def test_bad_tools_files_and_choices_are_one_line_errors(tmp_path, content, args, needles):
    path = tmp_path / "tools.json"
    path.write_text(content)
    assert_one_line_error(luodi("chat", "--tools", str(path), *args, stdin="hi\n"), *needles)
