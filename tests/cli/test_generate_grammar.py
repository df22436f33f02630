"""`luodi generate --json-schema FILE | --regex R | --choice A,B`: output that matches, one-line errors."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from test_cli import SMOLLM2, assert_one_line_error, luodi

from model_cache import pulled_model_path

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                           "population": {"type": "integer", "minimum": 0}},
          "required": ["city", "population"], "additionalProperties": False}


@pytest.fixture(scope="module", autouse=True)
def smollm2():
    return pulled_model_path(SMOLLM2)


def generate_json(*args: str) -> dict:
    result = luodi("generate", "-p", "Describe Paris.", "-t", "0", "-n", "80", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_json_schema_file_constrains_the_output(tmp_path):
    path = tmp_path / "city.json"
    path.write_text(json.dumps(SCHEMA))
    out = generate_json("--json-schema", str(path))
    assert out["finish_reason"] == "stop"
    jsonschema.validate(json.loads(out["text"]), SCHEMA)


@pytest.mark.parametrize(("args", "check"), [
    (("--choice", "yes,no,maybe"), lambda text: text in ("yes", "no", "maybe")),
    (("--regex", "[A-Z][a-z]{1,12} is in [A-Z][a-z]{1,12}"), lambda text: re.fullmatch("[A-Z][a-z]{1,12} is in [A-Z][a-z]{1,12}", text)),
])
def test_regex_and_choice_constrain_the_output(args, check):
    out = generate_json(*args)
    assert out["finish_reason"] == "stop" and check(out["text"]), out["text"]


def test_two_grammars_are_one_line_error():
    assert_one_line_error(luodi("generate", "-p", "hi", "--choice", "a,b", "--regex", "a"), "--regex", "--choice")


def test_an_invalid_schema_is_one_line_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"type": "frobnicate"}')
    assert_one_line_error(luodi("generate", "-p", "hi", "--json-schema", str(path)), "frobnicate")
