"""Outlines of Markdown, docx and pdf documents: nesting by level, page numbers, extractive points."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from luodi.apps.outline import heading_level, outline_document, to_markdown
from luodi.errors import DocumentError


def titles(sections, depth=0):
    """(depth, title) of every section, depth first."""
    return [pair for s in sections for pair in [(depth, s.title), *titles(s.children, depth + 1)]]


def test_markdown_levels_and_points(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("# Guide\n\nThis guide explains setup. More text.\n\n## Install\n\nRun the installer. Then reboot.\n\n"
                    "### Linux\n\nUse the package.\n\n## Use\n\nOpen the app.\n", encoding="utf-8")
    outline = outline_document(path)
    assert titles(outline.sections) == [(0, "Guide"), (1, "Install"), (2, "Linux"), (1, "Use")]
    assert outline.sections[0].points == ["This guide explains setup."]
    assert outline.sections[0].children[0].points == ["Run the installer."]
    markdown = to_markdown(outline)
    assert "- **Guide**\n  - This guide explains setup.\n  - **Install**" in markdown
    json.dumps(outline.to_dict())


def test_docx_numbered_headings(tmp_path):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_heading("第一章 总则", level=1)
    document.add_paragraph("本制度适用于全体员工。其他内容。")
    document.add_heading("第一节 适用范围", level=2)
    document.add_paragraph("包括正式员工和实习生。")
    document.add_heading("第二章 考勤", level=1)
    document.add_paragraph("每天九点上班。")
    document.save(str(tmp_path / "rules.docx"))
    outline = outline_document(tmp_path / "rules.docx")
    assert titles(outline.sections) == [(0, "第一章 总则"), (1, "第一节 适用范围"), (0, "第二章 考勤")]
    assert outline.sections[0].points == ["本制度适用于全体员工。"]


def test_pdf_pages(tmp_path):
    fitz = pytest.importorskip("reportlab.pdfgen.canvas")
    path = tmp_path / "r.pdf"
    c = fitz.Canvas(str(path))
    c.drawString(72, 720, "1 Introduction")
    c.drawString(72, 700, "Luodi runs models on CPUs.")
    c.showPage()
    c.drawString(72, 720, "2 Results")
    c.showPage()
    c.save()
    outline = outline_document(path)
    pages = [s.page for s in outline.sections]
    assert pages[0] == 1 and 2 in pages


def test_pdf_headings_followed_by_their_text(tmp_path):
    canvas = pytest.importorskip("reportlab.pdfgen.canvas")
    path = tmp_path / "r.pdf"
    pdf = canvas.Canvas(str(path))
    for page, (heading, body) in enumerate([("1 Introduction", "Luodi runs models on CPUs."),
                                            ("2 Results", "Decode reaches the memory wall.")]):
        pdf.drawString(72, 720, heading)
        pdf.drawString(72, 700, body)
        if page == 0:
            pdf.drawString(72, 660, "1.1 Scope")
            pdf.drawString(72, 640, "Only CPUs are measured.")
        pdf.showPage()
    pdf.save()
    outline = outline_document(path)
    assert titles(outline.sections) == [(0, "1 Introduction"), (1, "1.1 Scope"), (0, "2 Results")]
    assert [s.page for s in outline.sections] == [1, 2]
    assert outline.sections[1].points == ["Decode reaches the memory wall."]


@pytest.mark.parametrize(("title", "level"), [("2.1.3 Details", 3), ("3 Scope", 1), ("第二节 范围", 2),
                                              ("一、背景", 1), ("（二）目标", 2), ("Overview", 1)])
def test_heading_levels(title, level):
    assert heading_level(title, {}) == level


def test_unreadable_document_is_a_document_error(tmp_path):
    path = tmp_path / "x.xyz"
    path.write_text("?")
    with pytest.raises(DocumentError):
        outline_document(path)


def test_cli_outline_json_and_error(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("# A\n\nFirst point.\n\n## B\n\nSecond point.\n", encoding="utf-8")
    run = lambda *a: subprocess.run([sys.executable, "-m", "luodi", "outline", *a], capture_output=True, text=True,
                                    env=dict(os.environ), timeout=300)
    ok = run(str(path), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sections"][0]["children"][0]["title"] == "B"
    bad = run(str(tmp_path / "missing.md"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "no such file" in bad.stderr
