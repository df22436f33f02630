"""The web chat at `/`: static files with no external assets, and — in headless Chromium — a typed
message gets a streamed answer, a token rate, and a screenshot artifact."""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
from live_server import make_llm, running_server, service_for
from model_cache import REPO_ROOT

from luodi.kb.store.sqlite import SqliteStore
from luodi.server.app import STATIC_DIR
from luodi.server.kb_service import KnowledgeService

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("LUODI_TEST_ARTIFACTS") or REPO_ROOT / ".cache" / "artifacts")


@pytest.fixture(scope="module")
def base_url(loaded, tmp_path_factory):
    knowledge = KnowledgeService(partial(SqliteStore, tmp_path_factory.mktemp("web-kb")))
    with running_server(service_for(make_llm(loaded, max_num_seqs=2)), knowledge) as url:
        yield url


def test_page_and_assets_are_served(base_url):
    page = httpx.get(base_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/chat.js">' in page.text
    script = httpx.get(base_url + "/static/chat.js")
    style = httpx.get(base_url + "/static/chat.css")
    assert script.status_code == style.status_code == 200
    assert "javascript" in script.headers["content-type"] and style.headers["content-type"].startswith(
        "text/css"
    )


def test_no_external_assets():
    """The page must work offline: nothing it references lives on another host."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path.name
        assert "@import" not in text and "cdn" not in text.lower(), path.name


def _playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"{CHROMIUM} is not installed")
    return sync_api


@contextmanager
def chat_page(base_url: str, width: int = 900, height: int = 640):
    """The web chat in headless Chromium, model connected and settings open; yields (page, expect)."""
    sync_api = _playwright()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(base_url + "/")
            sync_api.expect(page.locator("#model")).to_have_text("smollm2", timeout=30_000)
            page.click("#settings summary")
            yield page, sync_api.expect
        finally:
            browser.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_chat_in_headless_chromium(base_url):
    with chat_page(base_url) as (page, expect):
        page.fill("#system", "You are a geography teacher. Answer in one sentence.")
        page.fill("#max-tokens", "16")
        page.fill("#prompt", "What is the capital of France?")
        page.press("#prompt", "Enter")
        expect(page.locator(".message.assistant .stats")).to_contain_text("tok/s", timeout=120_000)
        answer = page.locator(".message.assistant .text").inner_text()
        assert answer.strip() and "Error" not in answer
        assert page.locator(".message.user .text").inner_text() == "What is the capital of France?"
        screenshot(page, "web-chat.png")


def test_stop_button_ends_the_stream(base_url):
    with chat_page(base_url) as (page, expect):
        page.fill("#max-tokens", "2000")
        page.fill("#prompt", "Write a very long story about a lighthouse keeper.")
        page.click("#send")
        expect(page.locator(".message.assistant .text")).not_to_have_text("", timeout=60_000)  # streaming began
        page.click("#stop")
        expect(page.locator(".message.assistant .stats")).to_contain_text("stopped", timeout=30_000)
        assert page.locator("#send").is_enabled()


def test_knowledge_base_upload_and_cited_sources_in_headless_chromium(base_url, tmp_path):
    document = tmp_path / "travel.md"
    document.write_text("# Travel\n\nHotel costs in Shanghai are reimbursed up to 650 yuan per night.\n")
    with chat_page(base_url, width=1000, height=700) as (page, expect):
        page.fill("#kb-name", "travel")
        page.click("#kb-create")
        expect(page.locator("#kb-status")).to_have_text("created travel", timeout=30_000)
        assert page.locator("#kb").input_value() == "travel"
        page.set_input_files("#upload", str(document))
        expect(page.locator("#kb-status")).to_have_text("travel.md: added", timeout=120_000)
        page.fill("#max-tokens", "24")
        page.fill("#prompt", "How much is the hotel limit in Shanghai?")
        page.press("#prompt", "Enter")
        expect(page.locator(".message.assistant .stats")).to_contain_text("tok/s", timeout=120_000)
        source = page.locator(".message.assistant ol.sources li").first
        expect(source.locator(".place")).to_have_text("travel.md · Travel")
        assert "650 yuan" in source.locator(".passage").inner_text()
        screenshot(page, "web-chat-kb.png")
