"""POST /v1/apps/scene on a real server with SmolLM2: every character answers in turn, each prompt
holds its own secret and no one else's, the transcript carries over between requests, and bad
input is a 400 naming it."""

from __future__ import annotations

import httpx
import pytest
from live_server import make_llm, running_server, service_for

SCENE = {
    "title": "Death at Hollow Manor", "setting": "Lord Hollow was found dead in the library.", "user": "Inspector",
    "characters": [
        {"name": "Agnes", "public": "The cook.", "secret": "She drugged the lord's cocoa."},
        {"name": "Victor", "public": "The heir.", "secret": "He owes a gambling club 4000 pounds.",
         "style": "charming, evasive"},
    ],
}
QUESTION = "Where were you at midnight?"


@pytest.fixture(scope="module")
def base_url(loaded):
    with running_server(service_for(make_llm(loaded, max_num_seqs=2))) as url:
        yield url


def play(base_url: str, **body) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/apps/scene", json={"scene": SCENE, **body}, timeout=300)


def test_every_character_answers_in_turn(base_url):
    response = play(base_url, message=QUESTION, max_tokens=24, temperature=0)
    assert response.status_code == 200, response.text
    lines = response.json()["lines"]
    assert [line["speaker"] for line in lines] == ["Agnes", "Victor"]
    assert all(line["text"].strip() and line["prompt_tokens"] > 0 for line in lines)
    assert all(isinstance(line["leaked"], bool) for line in lines)


def test_each_prompt_holds_only_its_own_secret(base_url):
    prompts = play(base_url, message=QUESTION, print_prompt=True).json()["prompts"]
    assert set(prompts) == {"Agnes", "Victor"}
    assert "drugged" in prompts["Agnes"] and "gambling" not in prompts["Agnes"]
    assert "gambling" in prompts["Victor"] and "drugged" not in prompts["Victor"]
    assert all(f"Inspector: {QUESTION}" in prompt for prompt in prompts.values())


def test_the_transcript_carries_over(base_url):
    transcript = [{"speaker": "Inspector", "text": QUESTION}, {"speaker": "Agnes", "text": "In the kitchen."}]
    prompts = play(base_url, transcript=transcript, speakers=["Victor"], message="And you, sir?",
                   print_prompt=True).json()["prompts"]
    assert list(prompts) == ["Victor"]
    assert f"Inspector: {QUESTION}\nAgnes: In the kitchen.\nInspector: And you, sir?" in prompts["Victor"]
    lines = play(base_url, transcript=transcript, speakers=["Victor"], max_tokens=8).json()["lines"]
    assert [line["speaker"] for line in lines] == ["Victor"]


@pytest.mark.parametrize(("body", "needle"), [
    ({"scene": {**SCENE, "characters": SCENE["characters"][:1]}}, "2 to 8 characters"),
    ({"speakers": ["Butler"]}, "no character named 'Butler'"),
    ({"transcript": [{"speaker": "Butler", "text": "Hm."}]}, "transcript.0.speaker"),
    ({"message": "   "}, "the line is empty"),
    ({"scene": {**SCENE, "title": ""}}, "scene.title"),
])
def test_bad_input_is_a_400_naming_it(base_url, body, needle):
    response = play(base_url, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"] + str(error["param"])
