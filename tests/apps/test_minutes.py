"""Minutes on the bundled SmolLM2: parts split at turns with the instructions whole, a deterministic
merge, output valid against the JSON Schema (checked with `jsonschema`), owners among the speakers."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import jsonschema
import pytest

from luodi.apps.candidates import Candidate, action_candidates
from luodi.apps.generation import engine_generate
from luodi.apps.minutes import (
    INSTRUCTIONS, merge_actions, minutes_schema, part_prompt, part_schema, split_parts, to_markdown, write_minutes,
)
from luodi.apps.transcript import parse_transcript, read_transcript
from luodi.llm import LLM
from model_cache import pulled_model_path

EVAL = Path(__file__).resolve().parents[2] / "benchmarks" / "apps_eval"


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM.load(str(pulled_model_path("smollm2-135m-instruct")), device="cpu", dtype="float32")


def long_transcript():
    return read_transcript(EVAL / "en_long_planning.txt")


def test_parts_hold_whole_turns_in_order_and_every_prompt_starts_with_the_instructions(llm):
    transcript = long_transcript()
    parts = split_parts(llm, transcript, action_candidates(transcript), max_part_tokens=1024)
    assert len(parts) > 3
    assert [t for p in parts for t in p.turns] == list(transcript.turns)  # nothing cut, lost or reordered
    prefix = shared_prefix(*(llm.prompt_ids([{"role": "system", "content": INSTRUCTIONS},
                                             {"role": "user", "content": text}]) for text in ("x", "y")))
    assert INSTRUCTIONS in llm.tokenizer.decode(prefix)  # what every part must share, for the prefix cache
    for part in parts:
        ids = part_prompt(llm, transcript, part)
        assert ids[:len(prefix)] == prefix
        assert INSTRUCTIONS in llm.tokenizer.decode(ids)
        assert len(ids) < llm.context_window


def shared_prefix(a: list[int], b: list[int]) -> list[int]:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return a[:n]


def test_an_overlong_turn_is_split_at_sentences_keeping_its_index(llm):
    sentence = "The migration of the billing service is on track and the team is confident about it. "
    transcript = parse_transcript(f"A: hello\nB: {sentence * 60}\nA: thanks\n")
    parts = split_parts(llm, transcript, [], max_part_tokens=256)
    pieces = [t for p in parts for t in p.turns if t.index == 1]
    assert len(pieces) > 1 and all(t.speaker == "B" for t in pieces)
    assert " ".join(t.text for t in pieces) == transcript.turns[1].text


def fixed_generate(prompts, params):
    """Answers as the schema of each request asks, owner = the first speaker allowed: no model."""
    out = []
    for p in params:
        schema = json.loads(p.grammar.text)
        owners = schema["properties"].get("owners", {}).get("properties", {})
        out.append(json.dumps({"title": "T", "summary": "S", "owners": {k: v["enum"][0] for k, v in owners.items()}}))
    return out


def test_merge_does_not_depend_on_how_the_transcript_was_split(llm):
    transcript = long_transcript()
    few = write_minutes(llm, transcript, generate=fixed_generate, max_part_tokens=6000).to_dict()
    many = write_minutes(llm, transcript, generate=fixed_generate, max_part_tokens=700).to_dict()
    for key in ("action_items", "decisions", "open_questions", "attendees", "date", "title"):
        assert few[key] == many[key], key


def test_merge_keeps_rule_owners_fills_the_rest_and_drops_duplicates():
    due = date(2024, 12, 6)
    candidates = [Candidate(1, "A", "I'll write it by Friday.", "A", due),
                  Candidate(2, "B", "We should ship it.", None, None),
                  Candidate(3, "A", "I'll write it by Friday.", "A", due)]  # said again: one item
    items = merge_actions(candidates, {"c1": "B", "c0": "B"})  # the model cannot override a rule's owner
    assert [(i.owner, i.task, i.due, i.turn) for i in items] == [
        ("A", "I'll write it by Friday.", "2024-12-06", 1), ("B", "We should ship it.", None, 2)]
    assert merge_actions(candidates, {"c1": "B", "c0": "B"}) == merge_actions(candidates, {"c0": "B", "c1": "B"})


@pytest.mark.parametrize("name", ["zh_budget.txt", "en_launch.txt"])
def test_minutes_of_the_model_validate_and_owners_are_speakers(llm, name):
    transcript = read_transcript(EVAL / name)
    replies: list[tuple[str, dict]] = []
    run = engine_generate(llm)

    def recording(prompts, params):
        texts = run(prompts, params)
        replies.extend((t, json.loads(p.grammar.text)) for t, p in zip(texts, params))
        return texts

    result = write_minutes(llm, transcript, generate=recording).to_dict()
    jsonschema.validate(result, minutes_schema(transcript.speakers), format_checker=jsonschema.FormatChecker())
    assert {a["owner"] for a in result["action_items"]} <= set(transcript.speakers)
    assert all(0 <= a["turn"] < len(transcript.turns) for a in result["action_items"])
    for text, schema in replies:  # what the model itself wrote is valid against its part schema
        jsonschema.validate(json.loads(text), schema)
    markdown = to_markdown(write_minutes(llm, transcript, generate=fixed_generate))
    assert markdown.startswith(f"# {transcript.title}\n") and "| Owner | Task | Due | Turn |" in markdown


def test_part_schema_owners_are_an_enum_of_the_speakers():
    schema = part_schema(["c0", "c3"], ("张伟", "Maria"))
    assert schema["properties"]["owners"]["properties"] == {"c0": {"enum": ["张伟", "Maria"]},
                                                           "c3": {"enum": ["张伟", "Maria"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"title": "t", "summary": "s", "owners": {"c0": "Bob", "c3": "张伟"}}, schema)
