"""Document loaders: the text written into each test document must come back out, in place.

Oracles: the sentences `documents.py` wrote. Text layers and text files must match exactly; OCR
output is compared with whitespace removed (clean renders OCR exactly, so no slack). The whole
module runs with network connections refused, so OCR's bundled models are proven offline.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from documents import (A5, has_cjk_font, write_docx, write_html, write_pdf, write_png,
                       write_scanned_pdf, write_text)
from luodi.errors import DocumentError, LuodiError
from luodi.kb.document import Block
from luodi.kb.ingest.loaders import SUPPORTED_SUFFIXES, load_document
from luodi.kb.ingest.text import join_wrapped_lines, remove_cjk_spaces

ZH = ["知识库把私有文档切成带出处的片段，检索时同时使用关键词和向量。",
      "扫描件会先做文字识别，再进入索引，整个过程不需要联网。"]
EN = ["Everything runs on the machine you already have, and no document ever leaves it.",
      "Answers cite the file and the page that each statement came from."]
# Long enough to wrap over several lines on an A4 page: the loader must join them back.
ZH_LONG = ("本地部署的大语言模型可以在企业内部网络中运行，所有的文档、提问和回答都保存在自己的机器上，"
           "不会上传到任何外部服务，因此适合处理合同、病历和财务报表这类敏感资料。")
EN_LONG = ("A private language model stack keeps every document, question and answer on hardware "
           "you control, which is what contracts, medical records and financial reports require "
           "before anyone is allowed to search them with a model.")

# Every test that draws text with WenQuanYi Zen Hei (documents.WQY_ZENHEI) carries this mark.
needs_font = pytest.mark.skipif(not has_cjk_font(), reason="needs the CJK font of Debian's fonts-wqy-zenhei "
                                                           "package, not installed: apt install fonts-wqy-zenhei")


@pytest.fixture(autouse=True, scope="module")
def no_network() -> Iterator[None]:
    """Every loader must work offline: any attempt to open a connection fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a loader tried to use the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield


def text_of(blocks: list[Block]) -> str:
    return "\n".join(b.text for b in blocks)


def squeeze(text: str) -> str:
    return "".join(text.split())


def assert_ocr_found(sentences: list[str], blocks: list[Block]) -> None:
    found = squeeze(text_of(blocks))
    for sentence in sentences:
        assert squeeze(sentence) in found, (sentence, found)


# ---- pdf with a text layer -------------------------------------------------------------------

@needs_font
@pytest.mark.parametrize("sentences", [ZH + [ZH_LONG], EN + [EN_LONG]], ids=["zh", "en"])
def test_pdf_text_layer(tmp_path: Path, sentences: list[str]) -> None:
    path = write_pdf(tmp_path / "doc.pdf", [sentences])
    blocks = load_document(path)
    text = text_of(blocks)
    for sentence in sentences:
        assert sentence in text
    assert {b.page for b in blocks} == {1}


@needs_font
def test_pdf_page_numbers(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "two.pdf", [[ZH[0], EN[0]], [ZH[1], EN[1]]])
    blocks = load_document(path)
    for page, sentences in ((1, [ZH[0], EN[0]]), (2, [ZH[1], EN[1]])):
        on_page = text_of([b for b in blocks if b.page == page])
        assert all(s in on_page for s in sentences), (page, on_page)
    assert [b.page for b in blocks] == sorted(b.page for b in blocks)


# ---- OCR: scans and images -------------------------------------------------------------------

@needs_font
def test_scanned_pdf_is_ocred(tmp_path: Path) -> None:
    path = write_scanned_pdf(tmp_path / "scan.pdf", [[ZH[0], EN[0], ZH[1]]])
    from pypdf import PdfReader

    assert PdfReader(path).pages[0].extract_text().strip() == ""  # really no text layer
    blocks = load_document(path)
    assert_ocr_found([ZH[0], EN[0], ZH[1]], blocks)
    assert {b.page for b in blocks} == {1}


@needs_font
def test_png_is_ocred(tmp_path: Path) -> None:
    lines = [ZH[0], EN[1], "第二段：本地部署，数据不出门。"]
    blocks = load_document(write_png(tmp_path / "note.png", lines, transparent=True))
    assert_ocr_found(lines, blocks)
    # One paragraph per rendered paragraph; Chinese without spaces between characters,
    # English with its word spaces.
    assert blocks == [Block(line) for line in lines]


def test_cjk_spacing() -> None:
    assert remove_cjk_spaces("知识 库 支持 OCR 识别 ， 很好") == "知识库支持 OCR 识别，很好"
    assert join_wrapped_lines(["本地部署的", "大模型", "runs on", "your machine。", "好"]) == \
        "本地部署的大模型runs on your machine。好"


# ---- text and markdown -----------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gbk", "utf-8-sig", "utf-16", "utf-8"])
def test_text_encodings(tmp_path: Path, encoding: str) -> None:
    text = f"{ZH[0]}\n\n{EN[0]}\n{ZH[1]}\n"
    blocks = load_document(write_text(tmp_path / "notes.txt", text, encoding))
    assert [b.text for b in blocks] == [ZH[0], f"{EN[0]}\n{ZH[1]}"]
    assert all(b.section is None and not b.heading for b in blocks)


def test_markdown_headings_are_sections(tmp_path: Path) -> None:
    text = (f"Intro before any heading.\n\n# 部署\n{ZH[0]}\n\n## Privacy ##\n{EN[0]}\n\n"
            f"```\n# a comment in code, not a heading\n```\n")
    blocks = load_document(write_text(tmp_path / "guide.md", text))
    assert blocks == [
        Block("Intro before any heading."),
        Block("部署", section="部署", heading=True),
        Block(ZH[0], section="部署"),
        Block("Privacy", section="Privacy", heading=True),
        Block(EN[0], section="Privacy"),
        Block("```\n# a comment in code, not a heading\n```", section="Privacy"),
    ]


# ---- docx ------------------------------------------------------------------------------------

def test_docx_heading_and_table(tmp_path: Path) -> None:
    table = [["型号", "内存", "Speed"], ["Qwen3-0.6B", "2 GB", "fast"]]
    path = write_docx(tmp_path / "spec.docx", [ZH[0], "# 硬件要求", EN[0], table, "## Notes", ZH[1]])
    blocks = load_document(path)
    assert blocks == [
        Block(ZH[0]),
        Block("硬件要求", section="硬件要求", heading=True),
        Block(EN[0], section="硬件要求"),
        Block("型号 | 内存 | Speed\nQwen3-0.6B | 2 GB | fast", section="硬件要求"),
        Block("Notes", section="Notes", heading=True),
        Block(ZH[1], section="Notes"),
    ]


# ---- html ------------------------------------------------------------------------------------

def test_html_keeps_article_drops_boilerplate(tmp_path: Path) -> None:
    nav = ["首页产品中心", "联系我们的销售团队", "Sign in to your account"]
    footer = "版权所有 © 2024 示例科技有限公司 保留所有权利"
    markup = "Set max_chunk_tokens to 512 for *long* [scanned] documents."  # no markdown escapes
    paragraphs = [ZH[0], EN[0], "# Deployment", ZH[1], EN[1], ZH_LONG, markup]
    path = write_html(tmp_path / "page.html", "本地知识库", paragraphs, nav=nav, footer=footer)
    blocks = load_document(path)
    text = text_of(blocks)
    for sentence in (ZH + EN + [ZH_LONG, markup]):
        assert sentence in text
    for boilerplate in [*nav, footer]:
        assert boilerplate not in text
    assert next(b for b in blocks if b.text == ZH[1]).section == "Deployment"
    assert Block("Deployment", section="Deployment", heading=True) in blocks


# ---- errors ----------------------------------------------------------------------------------

def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "slides.pptx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(DocumentError, match=r"slides\.pptx.*unsupported file type '\.pptx'.*\.pdf"):
        load_document(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="no such file"):
        load_document(tmp_path / "absent.pdf")


@pytest.mark.parametrize("name", ["broken.pdf", "broken.docx", "broken.png"])
def test_corrupt_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not really a document\n" * 20)
    with pytest.raises(DocumentError, match=rf"{name}: cannot read this \.\w+ file") as error:
        load_document(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["empty.txt", "empty.md", "empty.html"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DocumentError, match=rf"{name}: no text found"):
        load_document(path)


@needs_font
def test_pdf_without_any_text(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "blank.pdf", [[]], page_size=A5)  # a blank page is OCRed too
    with pytest.raises(DocumentError, match="blank.pdf: no text found"):
        load_document(path)


def test_missing_dependency_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_docx(tmp_path / "spec.docx", [EN[0]])
    monkeypatch.setitem(sys.modules, "docx", None)  # `import docx` now raises ImportError
    with pytest.raises(LuodiError, match=r"needs the 'python-docx' package.*pip install 'luodi\[kb\]'"):
        load_document(path)


def test_supported_suffixes() -> None:
    assert {".txt", ".md", ".html", ".pdf", ".docx", ".png", ".jpg", ".jpeg"} <= SUPPORTED_SUFFIXES


def test_blank_pdf_needs_no_font(tmp_path: Path) -> None:
    """The same case as above, built without any font: the blank page is OCRed, and found empty."""
    from bombs import write_blank_pdf
    from luodi.kb.ingest.limits import IngestBudget

    budget = IngestBudget(name="blank.pdf")
    with pytest.raises(DocumentError, match="blank.pdf: no text found"):
        load_document(write_blank_pdf(tmp_path / "blank.pdf", 1), budget)
    assert (budget.pages_read, budget.ocr_pages) == (1, 1)


@pytest.mark.parametrize(("text", "paragraphs"), [
    ("1 Introduction\nLuodi runs models\non CPUs.\n2.1 Results\nDecode is fast.\n",
     ["1 Introduction", "Luodi runs models on CPUs.", "2.1 Results", "Decode is fast."]),
    ("第二章 考勤\n每天九点上班。\n", ["第二章考勤", "每天九点上班。"]),
    # a number that opens a wrapped line inside a sentence stays in it; so does a numbered sentence
    ("Employees get\n15 days of leave per year.\n3 apples were sold.\n",
     ["Employees get 15 days of leave per year.", "3 apples were sold."]),
])
def test_pdf_numbered_heading_lines_are_blocks_of_their_own(text: str, paragraphs: list[str]) -> None:
    from luodi.kb.ingest.pdf import page_paragraphs

    assert page_paragraphs(text) == paragraphs
