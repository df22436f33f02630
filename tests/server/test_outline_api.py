"""POST /v1/apps/outline on a real server: Markdown, docx and pdf files made here come back as the
library's outline (headings nested, pages), and a bad upload is a 4xx naming the problem."""

from __future__ import annotations

import io

import httpx
import pytest
from live_server import make_llm, running_server, service_for

MAX_UPLOAD = 256 * 1024
GUIDE = ("# Guide\n\nThis guide explains setup. More text.\n\n"
         "## Install\n\nRun the installer. Then reboot.\n\n### Linux\n\nUse the package.\n\n## Use\n\nOpen the app.\n")


@pytest.fixture(scope="module")
def base_url(loaded):
    with running_server(service_for(make_llm(loaded), max_upload_bytes=MAX_UPLOAD)) as url:
        yield url


def upload(base_url: str, name: str, content: bytes, **kwargs) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/apps/outline", files={"file": (name, content)}, timeout=120, **kwargs)


def titles(sections: list[dict], depth: int = 0) -> list[tuple[int, str]]:
    return [pair for s in sections for pair in [(depth, s["title"]), *titles(s["children"], depth + 1)]]


def test_markdown_headings_nest_by_level(base_url):
    response = upload(base_url, "guide.md", GUIDE.encode())
    assert response.status_code == 200, response.text
    outline = response.json()["outline"]
    assert outline["source"] == "guide.md"
    assert titles(outline["sections"]) == [(0, "Guide"), (1, "Install"), (2, "Linux"), (1, "Use")]
    assert outline["sections"][0]["children"][0]["points"] == ["Run the installer."]
    assert "- **Guide**\n  - This guide explains setup.\n  - **Install**" in response.json()["markdown"]


def test_docx_headings(base_url):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_heading("第一章 总则", level=1)
    document.add_paragraph("本制度适用于全体员工。其他内容。")
    document.add_heading("第一节 适用范围", level=2)
    document.add_paragraph("包括正式员工和实习生。")
    document.add_heading("第二章 考勤", level=1)
    buffer = io.BytesIO()
    document.save(buffer)
    outline = upload(base_url, "员工制度.docx", buffer.getvalue()).json()["outline"]
    assert outline["source"] == "员工制度.docx"
    assert titles(outline["sections"]) == [(0, "第一章 总则"), (1, "第一节 适用范围"), (0, "第二章 考勤")]
    assert outline["sections"][0]["points"] == ["本制度适用于全体员工。"]


def test_pdf_headings_with_their_pages(base_url):
    canvas = pytest.importorskip("reportlab.pdfgen.canvas")
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    for heading, body in [("1 Introduction", "Luodi runs models on CPUs."),
                          ("2 Results", "Decode reaches the memory wall.")]:
        pdf.drawString(72, 720, heading)
        pdf.drawString(72, 700, body)
        pdf.showPage()
    pdf.save()
    response = upload(base_url, "report.pdf", buffer.getvalue())
    assert response.status_code == 200, response.text
    sections = response.json()["outline"]["sections"]
    assert [(s["title"], s["page"], s["points"]) for s in sections] == [
        ("1 Introduction", 1, ["Luodi runs models on CPUs."]), ("2 Results", 2, ["Decode reaches the memory wall."])]
    assert "**2 Results** (p. 2)" in response.json()["markdown"]


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("report.pdf", b"this is not a pdf", "report.pdf: cannot read this .pdf file"),
    ("tool.exe", b"MZ", "unsupported document type"),
    ("../secret.md", b"# A", "unsafe document name"),
    ("empty.md", b"", "empty.md"),
])
def test_a_bad_file_is_a_400_naming_it(base_url, name, content, needle):
    response = upload(base_url, name, content)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]
    assert "/uploads/" not in response.json()["error"]["message"]  # the spool's path stays inside


def test_a_body_that_is_not_a_form_is_a_400(base_url):
    response = httpx.post(f"{base_url}/v1/apps/outline", json={"file": GUIDE}, timeout=60)
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "file"


def test_an_upload_over_the_limit_is_a_413(base_url):
    response = upload(base_url, "big.md", b"# Big\n\n" + b"word " * MAX_UPLOAD)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_the_openapi_schema_declares_the_upload(base_url):
    post = httpx.get(f"{base_url}/openapi.json", timeout=60).json()["paths"]["/v1/apps/outline"]["post"]
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"


def test_outline_mode_of_the_web_chat(base_url, tmp_path):
    from test_web import chat_page, screenshot  # Playwright + Debian Chromium; skips without them

    (tmp_path / "guide.md").write_text(GUIDE + "\n<img src=x onerror=\"window.__injected = 1\">\n")
    (tmp_path / "tool.exe").write_bytes(b"MZ")
    with chat_page(base_url) as (page, expect):
        page.set_input_files("#outline-file", str(tmp_path / "tool.exe"))
        expect(page.locator(".message.outline .error-note")).to_contain_text("unsupported document type",
                                                                           timeout=30_000)
        page.set_input_files("#outline-file", str(tmp_path / "guide.md"))
        outline = page.locator(".message.outline").last.locator(".text.markdown")
        expect(outline.locator("li strong").first).to_have_text("Guide", timeout=60_000)
        assert outline.locator("li strong").all_inner_texts() == ["Guide", "Install", "Linux", "Use"]
        assert page.evaluate("window.__injected") is None
        screenshot(page, "outline-mode.png")
