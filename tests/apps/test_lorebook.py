"""Lorebook entries appear in the prompt exactly when their keys occur in the recent messages."""

from __future__ import annotations

import pytest
from cards_data import V2

from luodi.apps.cards import card_from_json
from luodi.apps.lorebook import active_entries, key_occurs
from luodi.apps.persona import Persona

BOOK = V2["data"]["character_book"]


def count_words(text: str) -> int:
    return len(text.split())


def contents(messages: list[str], book=BOOK) -> list[str]:
    return [e.content for e in active_entries(book, messages, count_words)]


@pytest.mark.parametrize(("key", "text", "expected"), [
    ("lamp", "the Lamp is lit", True),
    ("lamp", "lamplight", False),  # whole words for word-like keys
    ("art", "a party", False),
    ("灯塔", "这座灯塔很旧", True),  # CJK keys match inside text
    ("/gh?ost/i", "A GOST story", True),
    ("/([/", "anything", False),  # a broken pattern matches nothing
])
def test_key_matching(key, text, expected):
    assert key_occurs(key, text) is expected


def test_case_sensitive_entry():
    assert key_occurs("Lamp", "lamp", is_case_sensitive=True) is False
    assert key_occurs("Lamp", "Lamp", is_case_sensitive=True) is True


def test_entries_fire_exactly_on_their_keys():
    assert contents(["hello there"]) == []
    assert contents(["tell me about the lens"]) == ["The lamp is a Fresnel lens from 1871."]
    # written in insertion order: ghost (1) before lamp (2); the disabled lamp entry never
    assert contents(["the lamp and the ghost"]) == [
        "Mira does not believe in the ghost of the keeper before her.", "The lamp is a Fresnel lens from 1871."]
    assert contents(["这座灯塔"]) == ["灯塔建于1871年。"]


def test_selective_entry_needs_a_secondary_key():
    assert contents(["the boat"]) == []
    assert contents(["the boat in the storm"]) == ["The supply boat sank in the storm of '98."]


def test_scan_depth_limits_how_far_back_keys_count():
    assert contents(["the ghost", "ok", "hello"]) == []  # depth 2: the ghost message is 3 back
    assert contents(["the ghost", "hello"]) == ["Mira does not believe in the ghost of the keeper before her."]


def test_token_budget_keeps_the_highest_priority_entries():
    book = {"token_budget": 8, "entries": [
        {"keys": ["a"], "content": "one two three four five", "priority": 1, "insertion_order": 0},
        {"keys": ["b"], "content": "six seven eight nine ten", "priority": 5, "insertion_order": 1},
        {"keys": ["c"], "content": "eleven twelve", "constant": True, "insertion_order": 2}]}
    # constant first (2 words), then priority 5 (5 words); priority 1 would pass the budget of 8
    assert contents(["a b"], book) == ["six seven eight nine ten", "eleven twelve"]


def test_prompt_carries_lore_only_when_called():
    persona = Persona(card_from_json(V2), user="Ann")
    plain = persona.messages([], "hello", [])
    lore = active_entries(BOOK, ["the lamp?"], count_words)
    with_lore = persona.messages([], "the lamp?", lore)
    assert not any("Fresnel" in m["content"] for m in plain)
    assert [m for m in with_lore if "Fresnel" in m["content"]] == [
        {"role": "system", "content": "The lamp is a Fresnel lens from 1871."}]
    assert with_lore[:len(persona.prefix_messages())] == persona.prefix_messages()  # the fixed prefix is unchanged
