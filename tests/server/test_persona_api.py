"""POST /v1/apps/persona (and /greeting, /card) on a real server with SmolLM2: a reply in character,
the lorebook entry in the prompt exactly when its key is in the chat, the character's fixed part
reused from the prefix cache on the next turn, a streamed reply equal to the JSON one, export as
JSON and as a PNG that Pillow reads back, and a 400 naming each kind of bad card."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import pytest
from live_server import make_llm, running_server, service_for

import luodi.apps.cards

LORE = "The lamp is a Fresnel lens from 1871."
CARD = {
    "spec": "chara_card_v2", "spec_version": "2.0", "x_envelope_extra": "kept too",
    "data": {
        "name": "Mira",
        "description": "{{char}} keeps the lighthouse on a cold northern island.",
        "personality": "dry, kind",
        "scenario": "{{user}} arrives by boat in a storm.",
        "first_mes": "*Mira opens the door.* Get in, {{user}}, before the wind takes you.",
        "alternate_greetings": ["Storm's early, {{user}}."],
        "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: The keeper. Who else would live here?",
        "character_book": {"entries": [{"keys": ["lamp"], "content": LORE, "enabled": True, "insertion_order": 1}]},
        "x_unknown_field": {"nested": [1, 2, 3]},
    },
}
HELLO = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def server(loaded):
    llm = make_llm(loaded, max_num_seqs=2)
    with running_server(service_for(llm)) as base_url:
        yield base_url, llm


def post(server, path: str = "", params: dict | None = None, **body) -> httpx.Response:
    return httpx.post(f"{server[0]}/v1/apps/persona{path}", json=body, params=params, timeout=300)


def prompt_for(server, messages: list[dict]) -> str:
    response = post(server, card=CARD, messages=messages, print_prompt=True)
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


def test_a_reply_in_character(server):
    response = post(server, card=CARD, messages=HELLO, max_tokens=16, temperature=0)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["reply"].strip() and reply["prompt_tokens"] > 0 and reply["lore"] == []


def test_the_lorebook_entry_is_in_the_prompt_exactly_when_its_key_is(server):
    with_key = prompt_for(server, [{"role": "user", "content": "Does the lamp still work?"}])
    without = prompt_for(server, HELLO)
    assert LORE in with_key and LORE not in without
    # The entry goes after the character's fixed part, just before the newest message.
    assert with_key.index("Who else would live here?") < with_key.index(LORE) < with_key.index("Does the lamp")
    # Two messages back is past the book's scan depth (2): the entry is no longer called up.
    later = prompt_for(server, [{"role": "user", "content": "Does the lamp still work?"},
                                {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "Good night."}])
    assert LORE not in later
    reply = post(server, card=CARD, messages=[{"role": "user", "content": "Tell me about the lamp."}],
                 max_tokens=4).json()
    assert reply["lore"] == [LORE]


def test_the_prompt_names_the_user_and_uses_the_chosen_greeting(server):
    prompt = post(server, card=CARD, messages=HELLO, user_name="Ana", greeting_index=1, print_prompt=True).json()
    assert "Storm's early, Ana." in prompt["prompt"] and "Get in" not in prompt["prompt"]
    assert "Ana arrives by boat" in prompt["prompt"] and "{{user}}" not in prompt["prompt"]


def test_the_characters_fixed_part_comes_from_the_prefix_cache_on_the_next_turn(server):
    from luodi.apps.cards import card_from_json
    from luodi.apps.persona import Persona

    _, llm = server
    first = post(server, card=CARD, messages=HELLO, max_tokens=12, temperature=0).json()
    turn2 = [*HELLO, {"role": "assistant", "content": first["reply"]}, {"role": "user", "content": "Nice."}]
    second = post(server, card=CARD, messages=turn2, max_tokens=4, temperature=0).json()
    prefix = llm.tokenizer.encode_chat(Persona(card_from_json(CARD)).prefix_messages(), add_generation_prompt=False)
    block = llm.engine.config.block_size
    assert second["prompt_tokens"] > first["prompt_tokens"] > len(prefix)
    assert second["cached_tokens"] >= len(prefix) // block * block > 0


def test_a_client_that_keeps_the_greeting_gets_the_same_prompt(server):
    greeting = post(server, "/greeting", card=CARD, user_name="Ana").json()
    assert greeting == {"name": "Mira", "greeting": "*Mira opens the door.* Get in, Ana, before the wind takes you.",
                        "greetings": 2}
    kept = post(server, card=CARD, user_name="Ana", print_prompt=True,
                messages=[{"role": "assistant", "content": greeting["greeting"]}, *HELLO]).json()
    assert kept == post(server, card=CARD, user_name="Ana", print_prompt=True, messages=HELLO).json()


def test_the_stream_matches_the_json_reply(server):
    reply = post(server, card=CARD, messages=HELLO, max_tokens=16, temperature=0).json()["reply"]
    data = []
    with httpx.stream("POST", f"{server[0]}/v1/apps/persona", timeout=300,
                      json={"card": CARD, "messages": HELLO, "max_tokens": 16, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data:")]
    assert data[-1] == "[DONE]" and len(data) > 2
    assert "".join(json.loads(d)["delta"] for d in data[:-1]).strip() == reply


def _png_text(png: bytes) -> dict:
    from PIL import Image  # an independent PNG reader as the oracle

    image = Image.open(io.BytesIO(png))
    image.load()
    return {key: json.loads(base64.b64decode(value)) for key, value in image.text.items()}


def test_export_keeps_unknown_fields_as_json_and_png(server):
    exported = post(server, "/card", card=CARD)
    assert exported.status_code == 200 and exported.json() == CARD
    png = post(server, "/card", params={"format": "png"}, card=CARD)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert _png_text(png.content)["chara"] == CARD
    again = post(server, "/card", card_png=base64.b64encode(png.content).decode())
    assert again.json()["data"]["x_unknown_field"] == {"nested": [1, 2, 3]} and again.json() == CARD


def test_a_v1_card_is_exported_as_v2(server):
    v1 = {"name": "Bram", "description": "A retired sailor.", "char_greeting": "Sit down.", "x_v1_extra": "kept"}
    exported = post(server, "/card", card=v1).json()
    assert exported["spec"] == "chara_card_v2" and exported["data"]["first_mes"] == "Sit down."
    assert exported["data"]["x_v1_extra"] == "kept"


def _corrupt_png(server) -> str:
    png = bytearray(post(server, "/card", params={"format": "png"}, card=CARD).content)
    png[-30] ^= 0xFF  # inside the card's text chunk: its checksum no longer matches
    return base64.b64encode(bytes(png)).decode()


@pytest.mark.parametrize(("body", "needle"), [
    ({"card": {"description": "no name"}}, "the card has no 'name'"),
    ({"card": {"spec": "chara_card_v9", "data": {}}}, "unknown card spec"),
    ({"card": CARD, "card_png": "AAAA"}, "exactly one of"),
    ({}, "exactly one of"),
    ({"card_png": "not base64!"}, "card_png: not base64"),
    ({"card_png": base64.b64encode(b'{"name": "x"}').decode()}, "card_png: not a PNG file"),
    ({"card_png": "corrupt"}, "corrupt PNG"),
    ({"card": CARD, "greeting_index": 5}, "greeting 5 does not exist"),
    ({"card": CARD, "messages": [*HELLO, {"role": "assistant", "content": "Hi."}]}, "last message"),
    ({"card": CARD, "messages": [{"role": "user", "content": "  "}]}, "last message"),
    ({"card": CARD, "messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
    ({"card": CARD, "messages": []}, "messages"),
])
def test_bad_input_is_a_400_naming_it(server, body, needle):
    if body.get("card_png") == "corrupt":
        body = {**body, "card_png": _corrupt_png(server)}
    response = post(server, **{"messages": HELLO, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"] + str(error["param"])
    assert set(error) == {"message", "type", "param", "code"}


def test_an_oversized_card_is_a_400(server, monkeypatch):
    png = post(server, "/card", params={"format": "png"}, card=CARD).content
    monkeypatch.setattr(luodi.apps.cards, "MAX_CARD_BYTES", len(png) - 1)  # the server runs in this process
    response = post(server, "/card", card_png=base64.b64encode(png).decode())
    assert response.status_code == 400 and "too large for a character card" in response.json()["error"]["message"]


def test_persona_mode_of_the_web_chat(server, tmp_path):
    from test_web import chat_page, screenshot  # Playwright + Debian Chromium; skips without them

    sneaky = {"name": "Bram", "first_mes": 'Sit down. <img src=x onerror="window.__injected = 1">'}
    (tmp_path / "bram.json").write_text(json.dumps(sneaky))
    (tmp_path / "mira.png").write_bytes(post(server, "/card", params={"format": "png"}, card=CARD).content)
    (tmp_path / "broken.json").write_text("{not json")
    with chat_page(server[0]) as (page, expect):
        page.fill("#prompt", "Hello?")
        page.click("#persona")  # no card loaded yet
        expect(page.locator(".message.assistant.error .text")).to_contain_text("character card", timeout=10_000)
        page.set_input_files("#persona-card", str(tmp_path / "broken.json"))
        expect(page.locator("#persona-card-status")).to_contain_text("neither a PNG card nor JSON")
        page.set_input_files("#persona-card", str(tmp_path / "bram.json"))
        expect(page.locator(".message.persona .text").last).to_have_text(sneaky["first_mes"], timeout=30_000)
        assert page.evaluate("window.__injected") is None  # shown as text, never as HTML
        page.set_input_files("#persona-card", str(tmp_path / "mira.png"))
        expect(page.locator("#persona-card-status")).to_have_text("chatting with Mira", timeout=30_000)
        greeting = "*Mira opens the door.* Get in, User, before the wind takes you."
        expect(page.locator(".message.persona .text").last).to_have_text(greeting)
        page.fill("#max-tokens", "16")
        page.fill("#prompt", "Who are you?")
        page.click("#persona")
        reply = page.locator(".message.persona").last
        expect(reply).not_to_have_class(re.compile("streaming"), timeout=120_000)
        assert reply.locator(".text").inner_text().strip() and reply.locator(".error-note").count() == 0
        screenshot(page, "persona-mode.png")


def test_a_card_over_the_json_body_limit_is_taken_as_an_upload(server):
    """A card with its avatar is MBs: the persona routes take bodies up to the upload limit."""
    big = {**CARD, "data": {**CARD["data"], "creator_notes": "x" * (5 * 2**20)}}  # over max_body_bytes (4 MB)
    response = post(server, "/card", card=big)
    assert response.status_code == 200 and response.json()["data"]["creator_notes"] == big["data"]["creator_notes"]
