"""POST /v1/apps/minutes on a real server with SmolLM2: valid minutes, 400s naming bad input."""

from __future__ import annotations

from pathlib import Path

import httpx
import jsonschema
import pytest
from live_server import make_llm, running_server, service_for

from luodi.apps.minutes import minutes_schema

EVAL = Path(__file__).resolve().parents[2] / "benchmarks" / "apps_eval"


@pytest.fixture(scope="module")
def base_url(loaded):
    with running_server(service_for(make_llm(loaded, kv_cache_bytes=128 * 2**20))) as url:
        yield url


def test_minutes_of_a_subtitle_transcript(base_url):
    body = {"transcript": (EVAL / "zh_hr.srt").read_text(encoding="utf-8"), "format": "srt", "date": "2024-12-20"}
    response = httpx.post(f"{base_url}/v1/apps/minutes", json=body, timeout=600)
    assert response.status_code == 200, response.text
    minutes = response.json()["minutes"]
    jsonschema.validate(minutes, minutes_schema(["赵丽", "孙涛"]))
    assert ("孙涛", "2025-01-10") in {(a["owner"], a["due"]) for a in minutes["action_items"]}
    assert response.json()["markdown"].startswith("# ")


@pytest.mark.parametrize(("body", "needle"), [
    ({"transcript": ""}, "empty"),
    ({"transcript": "we talked and left"}, "no speaker turns"),
    ({"transcript": "A: hi", "format": "pdf"}, "format"),
    ({"transcript": "A: hi", "date": "next week"}, "date"),
])
def test_bad_input_is_a_400_naming_it(base_url, body, needle):
    response = httpx.post(f"{base_url}/v1/apps/minutes", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


def test_a_fifty_megabyte_body_is_refused_before_it_is_read(base_url):
    response = httpx.post(f"{base_url}/v1/apps/minutes", content=b"x" * (50 * 2**20),
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413 and "error" in response.json()


def test_minutes_mode_of_the_web_chat(base_url):
    from test_web import chat_page  # Playwright + Debian Chromium; skips without them

    with chat_page(base_url) as (page, expect):
        page.fill("#prompt", "we talked and left")
        page.click("#minutes")
        expect(page.locator(".message.assistant.error .text")).to_contain_text("no speaker turns", timeout=60_000)
        page.fill("#prompt", "Date: 2024-10-07\nAlex: Sam, please post the designer role by October 11.\nSam: OK.")
        page.click("#minutes")
        answer = page.locator(".message.assistant:not(.error) .text")
        expect(answer.locator("h2").first).to_have_text("Summary", timeout=300_000)
        expect(answer.locator("table")).to_contain_text("2024-10-11")
