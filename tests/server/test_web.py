"""The web chat at `/`: static files with no external assets, and — in headless Chromium — a typed
message gets a streamed answer, a token rate, and a screenshot artifact; answers are rendered
from Markdown without ever becoming live HTML; the Scene mode shows a scene's cast without its
secrets and plays it, each character in turn, behind an API key.

The browser tests drive Debian's Chromium (`apt install chromium`) through Playwright and skip,
saying so, where it is not installed."""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import json

import httpx
import pytest
from live_server import make_llm, running_server, service_for
from model_cache import REPO_ROOT

from luodi.kb.store.sqlite import SqliteStore
from luodi.server.app import STATIC_DIR
from luodi.server.auth import add_key
from luodi.server.kb_service import KnowledgeService

CHROMIUM = os.environ.get("LUODI_CHROMIUM") or "/usr/bin/chromium"  # Debian's package `chromium`
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


def chromium_executable(path: str = CHROMIUM) -> str:
    """The Chromium to drive, or a skip that says which system package to install."""
    found = path if Path(path).is_file() and os.access(path, os.X_OK) else shutil.which(Path(path).name)
    if not found:
        pytest.skip(f"Chromium is not installed at {path}: the web-chat browser tests need the Debian "
                    "package `chromium` (apt install chromium)")
    return found


def _playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    return sync_api, chromium_executable()


@contextmanager
def chat_page(base_url: str, width: int = 900, height: int = 640, api_key: str | None = None):
    """The web chat in headless Chromium, model connected and settings open; yields (page, expect).
    With `api_key`, the page starts with it as if typed into Settings earlier in the tab."""
    sync_api, executable = _playwright()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            if api_key is not None:
                page.add_init_script(f"sessionStorage.setItem('luodi-api-key', {json.dumps(api_key)});")
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


def test_a_missing_chromium_skips_naming_the_debian_package(tmp_path):
    with pytest.raises(pytest.skip.Exception, match=r"Debian package `chromium` \(apt install chromium\)"):
        chromium_executable(str(tmp_path / "no-such-browser"))


# -- Markdown answers ---------------------------------------------------------------------------------

INJECTION = '<img src=x onerror="window.__injected = 1"> <script>window.__injected = 2</script>'
ANSWER = (
    "Here is **the plan** for *today* [1]:\n\n"
    "1. Pack `luodi`\n2. Ship it\n\n"
    "| Model | Size |\n|---|---:|\n| SmolLM2 | 135M |\n| Qwen2.5 | 1.5B |\n\n"
    "```python\nprint('<b>hi</b>')\n```\n\n"
    f"Also: {INJECTION} and [a link](https://example.org/docs) and [bad](javascript:alert(1)).\n"
)

RENDERED = [  # (Markdown, the innerHTML the renderer must build)
    ("Hello **bold** and *it* and `x<y`", "<p>Hello <strong>bold</strong> and <em>it</em> and <code>x&lt;y</code></p>"),
    ("line one\nline two\n\nnext", "<p>line one<br>line two</p><p>next</p>"),
    ("- a\n- b **c**", "<ul><li>a</li><li>b <strong>c</strong></li></ul>"),
    ("3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    ("- a\n  - nested", "<ul><li>a<ul><li>nested</li></ul></li></ul>"),
    ("```js\nlet a = '<i>';\n```", '<pre><code class="language-js">let a = \'&lt;i&gt;\';</code></pre>'),
    ("| a | b |\n|:-|-:|\n| 1 | 2 |",
     '<table><thead><tr><th style="text-align: left;">a</th><th style="text-align: right;">b</th></tr></thead>'
     '<tbody><tr><td style="text-align: left;">1</td><td style="text-align: right;">2</td></tr></tbody></table>'),
    ("# Title", "<h1>Title</h1>"),
    ("[ok](https://a.example/x) [mail](mailto:a@b.example) [js](javascript:alert(1)) [rel](/etc)",
     '<p><a href="https://a.example/x" rel="noopener noreferrer nofollow" target="_blank">ok</a> '
     '<a href="mailto:a@b.example" rel="noopener noreferrer nofollow" target="_blank">mail</a> '
     "[js](javascript:alert(1)) <span>rel</span></p>"),  # not a link: shown as the text it is
    ("snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"),
    ("see [1] and [2]", "<p>see [1] and [2]</p>"),
    ('<img src=x onerror="alert(1)"><script>alert(2)</script>',
     "<p>&lt;img src=x onerror=\"alert(1)\"&gt;&lt;script&gt;alert(2)&lt;/script&gt;</p>"),
    ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
]


def test_markdown_renderer_builds_the_expected_dom(base_url):
    with chat_page(base_url) as (page, _):
        for markdown, expected in RENDERED:
            html = page.evaluate(
                "(text) => { const box = document.createElement('div'); box.append(renderMarkdown(text)); "
                "return box.innerHTML; }", markdown)
            assert html == expected, markdown


def _sse_reply(text: str, pieces: int = 24) -> str:
    """A chat completion stream whose content is `text`, cut into `pieces` deltas."""
    size = -(-len(text) // pieces)
    events = [{"id": "c", "object": "chat.completion.chunk", "model": "smollm2",
               "choices": [{"index": 0, "delta": {"content": text[i:i + size]}, "finish_reason": None}]}
              for i in range(0, len(text), size)]
    events.append({"id": "c", "object": "chat.completion.chunk", "model": "smollm2", "choices": [],
                   "usage": {"prompt_tokens": 5, "completion_tokens": len(events), "total_tokens": 5 + len(events)}})
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"


def test_streamed_markdown_answer_is_rendered_and_never_live_html(base_url):
    """The page from the real server; the answer stream is fixed (a model will not write this on cue)."""
    with chat_page(base_url, width=900, height=900) as (page, expect):
        page.route("**/v1/chat/completions", lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=_sse_reply(ANSWER)))
        page.fill("#prompt", "Plan my day")
        page.press("#prompt", "Enter")
        answer = page.locator(".message.assistant .text")
        expect(page.locator(".message.assistant .stats")).to_contain_text("tokens", timeout=30_000)
        assert answer.locator("strong").first.inner_text() == "the plan"
        assert answer.locator("em").first.inner_text() == "today"
        assert answer.locator("ol > li").all_inner_texts() == ["Pack luodi", "Ship it"]
        assert answer.locator("table tbody tr").count() == 2
        assert answer.locator("table th").all_inner_texts() == ["Model", "Size"]
        assert answer.locator("pre > code.language-python").inner_text() == "print('<b>hi</b>')"
        assert answer.locator("a").count() == 1
        assert answer.locator("a").get_attribute("href") == "https://example.org/docs"
        assert answer.locator("img, script, [onerror]").count() == 0
        assert page.evaluate("document.querySelectorAll('main img, main script').length") == 0
        assert page.evaluate("window.__injected === undefined")
        assert INJECTION in answer.inner_text()  # shown as the text it is
        assert "[1]" in answer.inner_text()  # citation markers stay as written
        assert "**" not in answer.inner_text() and "```" not in answer.inner_text()
        screenshot(page, "web-chat-markdown.png")
        page.locator(".message.assistant").screenshot(path=str(ARTIFACTS / "web-chat-markdown-answer.png"))


def test_api_key_is_kept_for_the_tab_only(base_url):
    with chat_page(base_url) as (page, _):
        page.fill("#api-key", "sk-test-key")
        page.dispatch_event("#api-key", "change")
        assert page.evaluate("sessionStorage.getItem('luodi-api-key')") == "sk-test-key"
        assert page.evaluate("localStorage.getItem('luodi-api-key')") is None


# -- Scene mode -----------------------------------------------------------------------------------------

QUESTION = "Where were you at midnight?"
_WORDS = re.compile(r"[a-z0-9]+|[\u4e00-\u9fff]", re.IGNORECASE)


@pytest.fixture(scope="module")
def keyed_server(loaded, tmp_path_factory):
    """A server that asks for an API key, as the page gets it from Settings; yields (base URL, key)."""
    keys = tmp_path_factory.mktemp("web-keys") / "keys.json"
    key = add_key(keys, "player")
    with running_server(service_for(make_llm(loaded, max_num_seqs=2), api_keys_file=keys)) as url:
        yield url, key


def _scene_error(server: tuple[str, str], **body) -> str:
    """The route's own error message for `body` (the oracle for what the page must show)."""
    url, key = server
    response = httpx.post(url + "/v1/apps/scene", json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=60)
    assert response.status_code == 400, response.text
    return response.json()["error"]["message"]


def _example_scene(page) -> dict:
    """The example scene the editor starts with, opening the editor."""
    page.click("#scene-editor summary")
    return json.loads(page.input_value("#scene-json"))


def _words(text: str) -> set[str]:
    """Its words, lowercased, leaving out one- and two-letter ones ("s" of "lord's") that any text has."""
    return {w.lower() for w in _WORDS.findall(text) if len(w) > 2 or not w.isascii()}


def test_scene_mode_plays_the_example_scene_in_turn(keyed_server):
    with chat_page(keyed_server[0], api_key=keyed_server[1]) as (page, expect):
        scene = _example_scene(page)
        names = [c["name"] for c in scene["characters"]]
        page.click("#scene-load")
        cast = page.locator("#scene-cast")
        expect(cast.locator("li")).to_have_count(len(names), timeout=30_000)
        assert cast.locator("li b").all_inner_texts() == names
        shown = cast.text_content()  # hidden nodes too
        unsecret = [{**c, "secret": ""} for c in scene["characters"]]
        public = _words(json.dumps({**scene, "characters": unsecret}))  # words the cast may well show
        for character in scene["characters"]:
            assert character["public"] in shown
            assert not (_words(character["secret"]) - public) & _words(shown), character["secret"]
        expect(page.locator("#scene-json")).to_be_hidden()  # the editor, secrets and all, folds away

        page.fill("#max-tokens", "12")
        page.fill("#prompt", QUESTION)
        page.click("#scene")
        lines = page.locator(".message.scene")
        expect(lines).to_have_count(len(names), timeout=30_000)
        expect(page.locator(".message.scene.streaming")).to_have_count(0, timeout=180_000)
        assert page.locator(".message.user .speaker").all_inner_texts() == [scene["user"]]
        assert lines.locator(".speaker").all_inner_texts() == names
        assert lines.locator(".error-note").count() == 0
        texts = lines.locator(".text").all_text_contents()
        assert all(text.strip() for text in texts)

        with page.expect_request("**/v1/apps/scene") as sent:  # the next round carries the transcript
            page.click("#scene-next")
        body = sent.value.post_data_json
        assert [(line["speaker"], line["text"]) for line in body["transcript"]] == \
            [(scene["user"], QUESTION), *zip(names, texts)]
        assert "message" not in body and body["speakers"] == names[:1]
        expect(lines).to_have_count(2 * len(names), timeout=30_000)
        expect(page.locator(".message.scene.streaming")).to_have_count(0, timeout=180_000)
        assert lines.locator(".speaker").all_inner_texts() == names * 2
        assert lines.locator(".error-note").count() == 0
        screenshot(page, "scene-mode.png")


def test_scene_mode_shows_the_routes_errors_on_one_line(keyed_server, tmp_path):
    with chat_page(keyed_server[0], api_key=keyed_server[1]) as (page, expect):
        status = page.locator("#scene-file-status")
        page.fill("#prompt", QUESTION)
        page.click("#scene")  # no scene loaded yet
        expect(page.locator(".message.assistant.error .text")).to_contain_text("Load a scene first")

        scene = _example_scene(page)
        page.fill("#scene-json", "{not json")
        page.click("#scene-load")
        expect(status).to_contain_text("the scene editor: not JSON")
        lonely = {**scene, "characters": scene["characters"][:1]}
        (tmp_path / "lonely.json").write_text(json.dumps(lonely))
        page.set_input_files("#scene-file", str(tmp_path / "lonely.json"))
        message = _scene_error(keyed_server, scene=lonely, speakers=[], print_prompt=True)
        expect(status).to_have_text("lonely.json: " + message, timeout=30_000)
        expect(page.locator("#scene-cast")).to_be_hidden()

        (tmp_path / "manor.json").write_text(json.dumps(scene))
        page.set_input_files("#scene-file", str(tmp_path / "manor.json"))
        expect(status).to_have_text("playing " + scene["title"], timeout=30_000)
        first = scene["characters"][0]["name"]
        page.fill("#max-tokens", "5000")  # over the route's limit: the first speaker's request fails
        page.click("#scene")
        message = _scene_error(keyed_server, scene=scene, transcript=[], speakers=[first], message=QUESTION,
                               max_tokens=5000)
        failed = page.locator(".message.scene")
        expect(failed.locator(".error-note")).to_have_text("Error: " + message, timeout=30_000)
        assert failed.count() == 1
        assert page.input_value("#prompt") == QUESTION  # not heard: kept to send again

        page.route("**/v1/apps/scene", lambda route: route.continue_(post_data=json.dumps(
            {**route.request.post_data_json, "speakers": ["Butler"]})))  # a speaker the scene does not have
        page.fill("#max-tokens", "8")
        page.click("#scene-next")
        message = _scene_error(keyed_server, scene=scene, speakers=["Butler"])
        expect(failed.last.locator(".error-note")).to_have_text("Error: " + message, timeout=30_000)
        assert "\n" not in message
        page.unroute("**/v1/apps/scene")

        page.click("#scene")  # the page still plays
        expect(failed).to_have_count(2 + len(scene["characters"]), timeout=30_000)
        expect(page.locator(".message.scene.streaming")).to_have_count(0, timeout=180_000)
        assert failed.locator(".speaker").all_inner_texts()[2:] == [c["name"] for c in scene["characters"]]
        assert failed.locator(".error-note").count() == 2
