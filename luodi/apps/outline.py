"""Document outlines: any file the knowledge base reads (pdf / docx / html / md / txt, scanned pages
through OCR) -> a hierarchy of headings, each with its first page and key points; JSON and Markdown.

Owns heading levels and key points. Levels come from a heading's numbering ("2.1.3" is level 3,
"第一章" 1, "第二节" 2, "一、" 1, "（一）" 2) or, in Markdown, from its `#`s; otherwise 1. Key
points are extractive — the first sentence of each of a section's first paragraphs — so an outline
never states what the document does not (a 135M model's paraphrase would). Reading the file is
`luodi.kb.ingest`'s; this module knows nothing of models, HTTP or the CLI.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from luodi.kb.document import Block
from luodi.kb.ingest.limits import IngestBudget
from luodi.kb.ingest.loaders import load_document

MAX_POINTS = 3
POINT_CHARS = 160
_NUMBERED = re.compile(r"^\s*(\d+(?:\.\d+)*)[.、)]?\s")
_ZH_CHAPTER = re.compile(r"^\s*第[一二三四五六七八九十百\d]+([章篇部节条])")
_ZH_LIST = re.compile(r"^\s*(（[一二三四五六七八九十]+）|[一二三四五六七八九十]+、)")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[。！？!?])|(?<=\.)\s")


@dataclass(slots=True)
class Section:
    title: str
    level: int
    page: int | None
    points: list[str] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)


@dataclass(slots=True)
class Outline:
    source: str
    sections: list[Section]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def outline_document(path: Path, budget: IngestBudget | None = None) -> Outline:
    """The outline of the document at `path`, read within `budget` (the knowledge base's default
    limits if None); raises `DocumentError` for a file it cannot read or one over a limit."""
    path = Path(path)
    blocks = load_document(path, budget)
    levels = _markdown_levels(path) if path.suffix.lower() in (".md", ".markdown") else {}
    return Outline(source=path.name, sections=build_outline(blocks, levels))


def build_outline(blocks: list[Block], md_levels: dict[str, int] | None = None) -> list[Section]:
    """Headings nested by level, in document order; text before the first heading goes under a
    level-1 section named after its first line."""
    roots: list[Section] = []
    stack: list[Section] = []
    for block in _with_numbered_headings(blocks):
        if block.heading or not stack:
            title = block.text.strip() if block.heading else _first_sentence(block.text)
            section = Section(title, heading_level(title, md_levels or {}) if block.heading else 1, block.page)
            while stack and stack[-1].level >= section.level:
                stack.pop()
            (stack[-1].children if stack else roots).append(section)
            stack.append(section)
            if block.heading:
                continue
        if len(stack[-1].points) < MAX_POINTS:
            stack[-1].points.append(_first_sentence(block.text))
    return roots


def _with_numbered_headings(blocks: list[Block]):
    """PDF and OCR text marks no headings: a short numbered first line ("2 Results", "第二章 考勤")
    of a block is taken as one."""
    for block in blocks:
        first, _, rest = block.text.strip().partition("\n")
        if not block.heading and _looks_like_heading(first):
            yield Block(first.strip(), page=block.page, heading=True)
            if rest.strip():
                yield Block(rest, page=block.page, section=first.strip())
        else:
            yield block


def _looks_like_heading(line: str) -> bool:
    line = line.strip()
    numbered = _NUMBERED.match(line) or _ZH_CHAPTER.match(line) or _ZH_LIST.match(line)
    return bool(numbered) and len(line) <= 60 and not re.search(r"[。！？.!?；;:：,，]$", line)


def heading_level(title: str, md_levels: dict[str, int]) -> int:
    if m := _NUMBERED.match(title):
        return m[1].count(".") + 1
    if m := _ZH_CHAPTER.match(title):
        return 1 if m[1] in "章篇部" else 2
    if m := _ZH_LIST.match(title):
        return 2 if m[1].startswith("（") else 1
    return md_levels.get(title, 1)


def _markdown_levels(path: Path) -> dict[str, int]:
    levels: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := _MD_HEADING.match(line):
            levels.setdefault(m[2], len(m[1]))
    return levels


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    sentence = next((s.strip() for s in _SENTENCE_END.split(flat) if s.strip()), flat)
    return sentence if len(sentence) <= POINT_CHARS else sentence[:POINT_CHARS - 1] + "…"


def to_markdown(outline: Outline) -> str:
    lines = [f"# Outline of {outline.source}", ""]
    for section in outline.sections:
        lines += _section_lines(section, 0)
    return "\n".join(lines).rstrip() + "\n"


def _section_lines(section: Section, depth: int) -> list[str]:
    indent = "  " * depth
    page = f" (p. {section.page})" if section.page else ""
    lines = [f"{indent}- **{section.title}**{page}"]
    lines += [f"{indent}  - {point}" for point in section.points]
    for child in section.children:
        lines += _section_lines(child, depth + 1)
    return lines
