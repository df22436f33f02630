"""Prompt assembly for a character: the card's fields in their places, example dialogues as turns,
{{char}}/{{user}} replaced, the greeting chosen."""

from __future__ import annotations

import pytest
from cards_data import V2

from luodi.apps.cards import card_from_json
from luodi.apps.persona import Persona, example_turns
from luodi.errors import InvalidParameterError


def test_prefix_layout():
    persona = Persona(card_from_json(V2), user="Ann")
    messages = persona.prefix_messages()
    system = messages[0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are Mira. Never break character.")
    for piece in ("Mira keeps the lighthouse", "Mira's personality: dry, kind, curious",
                  "Scenario: Ann arrives by boat in a storm."):
        assert piece in system["content"]
    assert messages[1:] == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "The keeper. Who else would live here?"},
        {"role": "user", "content": "Is it always this cold?"},
        {"role": "assistant", "content": "Only in the months.\nAll of them."},
        {"role": "assistant", "content": "*Mira opens the door.* Get in, Ann, before the wind takes you."},
    ]


def test_history_message_and_post_history_instructions_follow_the_prefix():
    persona = Persona(card_from_json(V2), user="Ann")
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hm"}]
    messages = persona.messages(history, "hello", [])
    assert messages[-4:] == history + [{"role": "user", "content": "hello"},
                                       {"role": "system", "content": "Reply to Ann in two sentences or fewer."}]


def test_alternate_greeting_and_bad_index():
    persona = Persona(card_from_json(V2), greeting_index=2)
    assert persona.greeting() == "Storm's early."
    with pytest.raises(InvalidParameterError, match="greeting 3 does not exist; this card has 3"):
        Persona(card_from_json(V2), greeting_index=3)


def test_example_turns_macros():
    assert example_turns("<USER>: a\n<BOT>: b\nmore b", "C", "U") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b\nmore b"}]
    assert example_turns("", "C", "U") == []
