"""POST /v1/apps/support on a real server with SmolLM2 over a knowledge base built through the
/v1/kb routes: sources naming the gold page, follow-ups searched with the conversation, hand-off
(in JSON and as the stream's last event), per-key knowledge bases, and 4xx for bad input."""

from __future__ import annotations

import json
from functools import partial

import httpx
import pytest
from live_server import make_llm, running_server, service_for

from luodi.apps.support import DEFAULT_MIN_SCORES, HANDOFF_TEXT
from luodi.server.auth import add_key
from luodi.server.kb_service import KnowledgeService

pytest.importorskip("apsw", reason="pip install 'luodi[kb]'")
PAGES = {
    "warranty.md": "# Warranty\n\nEvery Lumen T2 comes with a three-year limited warranty from the date of "
                   "purchase.\n",
    "wifi.md": "# Wi-Fi setup\n\nThe Lumen T2 connects to 2.4 GHz Wi-Fi networks only; 5 GHz networks are "
               "not supported.\n",
    "returns.md": "# Returns\n\nYou can return a Lumen T2 within 30 days of delivery for a full "
                  "refund.\n",
}
WIFI = [{"role": "user", "content": "Does the Lumen T2 work with 5 GHz Wi-Fi?"}]
OFF_TOPIC = [{"role": "user", "content": "What is the capital of Australia?"}]


@pytest.fixture(scope="module")
def server(loaded, tmp_path_factory):
    from luodi.kb.store.sqlite import SqliteStore

    root = tmp_path_factory.mktemp("support-api")
    keys = root / "keys.json"
    alice, bob = add_key(keys, "alice"), add_key(keys, "bob")
    service = service_for(make_llm(loaded, max_num_seqs=4), api_keys_file=keys)
    with running_server(service, KnowledgeService(partial(SqliteStore, root / "kb"))) as base_url:
        headers = {"alice": {"Authorization": f"Bearer {alice}"}, "bob": {"Authorization": f"Bearer {bob}"}}
        assert httpx.post(f"{base_url}/v1/kb", json={"name": "help"}, headers=headers["alice"],
                          timeout=120).status_code == 201
        for name, text in PAGES.items():
            response = httpx.put(f"{base_url}/v1/kb/help/documents/{name}", content=text.encode(),
                                 headers=headers["alice"], timeout=120)
            assert response.status_code == 200, response.text
        yield base_url, headers


def ask(server, who: str = "alice", **body) -> httpx.Response:
    base_url, headers = server
    return httpx.post(f"{base_url}/v1/apps/support", json={"kb": "help", **body}, headers=headers[who],
                      timeout=300)


def stream(server, **body) -> list[tuple[str, str]]:
    """The (event, data) pairs of a streamed answer, read line by line as they arrive."""
    base_url, headers = server
    events, name, data = [], "message", []
    with httpx.stream("POST", f"{base_url}/v1/apps/support", json={"kb": "help", "stream": True, **body},
                      headers=headers["alice"], timeout=300) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if data:
                    events.append((name, "\n".join(data)))
                name, data = "message", []
            elif line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data.append(line.partition(":")[2].removeprefix(" "))
    if data:
        events.append((name, "\n".join(data)))
    return events


def cited_pages(sources: list[dict]) -> list[str]:
    return [s["source"] for s in sources if s["cited"]]


def test_an_answerable_question_cites_the_gold_page(server):
    response = ask(server, messages=WIFI)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["handoff"] is False and reply["answer"].strip()
    assert "wifi.md" in cited_pages(reply["sources"])
    assert all("2.4 GHz" in s["text"] for s in reply["sources"] if s["source"] == "wifi.md")


def test_a_follow_up_is_searched_with_the_conversation(server):
    messages = [{"role": "user", "content": "How long is the warranty on the Lumen T2?"},
                {"role": "assistant", "content": "Three years [1]."},
                {"role": "user", "content": "Is that from the purchase date?"}]
    reply = ask(server, messages=messages).json()
    assert reply["query"] == "How long is the warranty on the Lumen T2? Is that from the purchase date?"
    assert not reply["handoff"] and "warranty.md" in cited_pages(reply["sources"])


def test_an_unanswerable_question_is_handed_off(server):
    reply = ask(server, messages=OFF_TOPIC).json()
    assert reply["handoff"] is True and reply["answer"] == HANDOFF_TEXT and reply["sources"] == []
    assert "close enough" in reply["reason"] and reply["best_score"] < DEFAULT_MIN_SCORES["en"]


def test_the_stream_matches_the_json_answer(server):
    reply = ask(server, messages=WIFI).json()
    events = stream(server, messages=WIFI)
    deltas = [json.loads(data)["delta"] for name, data in events if name == "message"]
    assert deltas and "".join(deltas).strip() == reply["answer"]
    assert [name for name, _ in events[len(deltas):]] == ["sources"]
    assert json.loads(events[-1][1]) == reply["sources"]


def test_an_unanswerable_stream_ends_with_the_handoff_event(server):
    events = stream(server, messages=OFF_TOPIC)
    assert [name for name, _ in events] == ["sources", "handoff"]
    assert json.loads(events[0][1]) == []
    handoff = json.loads(events[-1][1])
    assert handoff["question"] == OFF_TOPIC[0]["content"] and "close enough" in handoff["reason"]
    assert handoff["answer"] == HANDOFF_TEXT


def test_another_keys_knowledge_base_is_not_found(server):
    response = ask(server, who="bob", messages=WIFI)
    assert response.status_code == 404 and response.json()["error"]["code"] == "knowledge_base_not_found"


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"kb": "nope", "messages": WIFI}, 404, "nope"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "question"),
    ({"messages": [*WIFI, {"role": "assistant", "content": "Yes."}]}, 400, "question"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ({"messages": WIFI, "min_score": 2}, 400, "min_score"),
    ({"messages": WIFI, "model": "gpt-4"}, 404, "gpt-4"),
])
def test_bad_input_is_a_4xx_naming_it(server, body, status, needle):
    response = ask(server, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] + str(error["param"])
    assert set(error) == {"message", "type", "param", "code"}


def test_support_mode_of_the_web_chat(server):
    from test_web import chat_page, screenshot  # Playwright + Debian Chromium; skips without them

    base_url, headers = server
    key = headers["alice"]["Authorization"].removeprefix("Bearer ")
    with chat_page(base_url, api_key=key) as (page, expect):
        page.fill("#prompt", WIFI[0]["content"])
        page.click("#support")  # no knowledge base picked yet
        expect(page.locator(".message.assistant.error .text")).to_contain_text("knowledge base", timeout=10_000)
        page.select_option("#kb", "help")
        page.fill("#prompt", WIFI[0]["content"])
        page.click("#support")
        answered = page.locator(".message.assistant:not(.error)").nth(0)
        expect(answered.locator("ol.sources li.cited .place").first).to_contain_text("wifi.md", timeout=120_000)
        page.fill("#prompt", OFF_TOPIC[0]["content"])
        page.click("#support")
        handed_off = page.locator(".message.assistant:not(.error)").nth(1)
        expect(handed_off.locator(".handoff-note")).to_contain_text("close enough", timeout=60_000)
        expect(handed_off.locator(".text")).to_have_text(HANDOFF_TEXT)
        assert handed_off.locator("ol.sources").count() == 0
        screenshot(page, "support-mode.png")
