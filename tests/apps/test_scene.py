"""A scene with several characters: each is told only its own secret, speaks in turn, and a line that
repeats its secret is caught; bad scene files are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from luodi.apps.scene import SceneChat, read_scene, reveals, scene_from_dict, system_message
from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError
from luodi.llm import LLM
from model_cache import cache_home, pulled_model_path

MANOR = {
    "title": "Death at Hollow Manor",
    "setting": "Lord Hollow was found dead in the library at midnight. The guests are gathered in the hall.",
    "user": "Inspector",
    "characters": [
        {"name": "Agnes", "public": "The cook, twenty years in the house.",
         "secret": "She put sleeping powder in the lord's cocoa at eleven."},
        {"name": "Victor", "public": "The lord's nephew and heir.",
         "secret": "He owes four thousand pounds to a gambling club in Soho.", "style": "charming, evasive"},
        {"name": "林小姐", "public": "来访的画家，住在东厢房。", "secret": "她午夜时分曾进过书房偷走一封信。"},
    ],
}


def test_each_character_is_told_its_own_secret_and_only_that():
    scene = scene_from_dict(MANOR)
    for character in scene.characters:
        told = system_message(scene, character)
        assert character.secret in told
        for other in scene.characters:
            assert other is character or (other.secret not in told and other.public in told)
    assert "How you talk: charming, evasive" in system_message(scene, scene.characters[1])


def test_reveals_counts_runs_of_words_and_cjk_characters():
    secret = "He owes four thousand pounds to a gambling club in Soho."
    assert reveals("Fine. FOUR thousand pounds, to a club, Inspector.", secret)
    assert not reveals("Money? I have plenty of pounds.", secret)
    assert reveals("我承认，我偷走一封信。", "她午夜时分曾进过书房偷走一封信。")
    assert not reveals("我整晚都在画画。", "她午夜时分曾进过书房偷走一封信。")


@pytest.mark.parametrize(("change", "message"), [
    ({"characters": MANOR["characters"][:1]}, "2 to 8 characters"),
    ({"characters": [MANOR["characters"][0], MANOR["characters"][0]]}, "must differ"),
    ({"user": "Agnes"}, "must differ"),
    ({"characters": [{"name": "A", "public": "x"}, MANOR["characters"][1]]}, r"characters\[0\].secret"),
    ({"characters": [{"name": "A: B", "public": "x", "secret": "y"}, MANOR["characters"][1]]}, "may not hold ':'"),
    ({"title": 7}, "scene.title must be a non-empty string"),
    ({"setting": "night\ud800"}, "scene.setting holds a lone UTF-16 surrogate"),
])
def test_bad_scenes_name_the_field(change, message):
    with pytest.raises(InvalidParameterError, match=message):
        scene_from_dict({**MANOR, **change})


def test_a_file_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "scene.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidParameterError, match="is not UTF-8 JSON"):
        read_scene(path)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM.load(str(pulled_model_path("smollm2-135m-instruct")))


def test_every_character_speaks_in_turn_after_the_user(llm):
    table = SceneChat(llm, scene_from_dict(MANOR))
    table.say("Where were you all at midnight?")
    lines = table.round(SamplingParams(temperature=0, max_tokens=40))
    assert [line.speaker for line in lines] == ["Agnes", "Victor", "林小姐"]
    assert [line.speaker for line in table.transcript] == ["Inspector", "Agnes", "Victor", "林小姐"]
    for line in lines:
        assert line.text and not line.leaked
        assert not any(f"\n{name}:" in line.text for name in ("Inspector", "Agnes", "Victor", "林小姐"))
        secrets = [c.secret for c in table.scene.characters if c.name != line.speaker]
        assert not any(reveals(line.text, secret) for secret in secrets)
    # the transcript only grows: the second speaker's prompt holds the first speaker's line
    assert f"Agnes: {lines[0].text}" in table.messages_for(table.scene.character("Victor"))[1]["content"]
    assert lines[1].prompt_tokens > lines[0].prompt_tokens - 40


def luodi(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "LUODI_HOME": str(cache_home())}
    return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=900)


def test_cli_auto_rounds_print_one_json_line_per_turn(tmp_path):
    path = tmp_path / "manor.json"
    path.write_text(json.dumps(MANOR, ensure_ascii=False), encoding="utf-8")
    model = str(pulled_model_path("smollm2-135m-instruct"))
    result = luodi("scene", str(path), "--auto", "2", "--json", "-t", "0", "-n", "24", "-m", model)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["speaker"] for line in lines] == ["Agnes", "Victor", "林小姐"] * 2
    assert all(line["text"] and line["prompt_tokens"] > 0 for line in lines)


def test_cli_bad_scene_is_one_line(tmp_path):
    path = tmp_path / "manor.json"
    path.write_text(json.dumps({**MANOR, "characters": MANOR["characters"][:1]}), encoding="utf-8")
    result = luodi("scene", str(path), "--auto", "1")
    assert result.returncode != 0
    assert "2 to 8 characters" in result.stderr and "Traceback" not in result.stderr
