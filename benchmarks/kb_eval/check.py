"""Validate the bilingual retrieval evaluation set (corpus.json + questions.json).

Owns: the structural rules of the set — every question points at an existing document, its gold
string is an exact substring of exactly one paragraph of that document and of no other document,
and the documents keep the shapes the rendering and OCR steps expect. Knows nothing about Luodi's
loaders, chunker or retriever; stdlib only.

Usage: python benchmarks/kb_eval/check.py   (exit status 1 when any rule fails)
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
LANGS = ("zh", "en")
FORMATS = ("md", "txt", "html", "docx", "pdf", "scanned_pdf", "png")
OCR_FORMATS = ("scanned_pdf", "png")
DOC_CHARS = (300, 1500)  # title + headings + paragraphs, for every format but png
GOLD_CHARS = (8, 40)
PNG_MAX_LINES = 8  # title + heading + paragraph lines
PNG_LINE_CHARS = {"zh": 30, "en": 60}
SCANNED_LINE_CHARS = {"zh": 45, "en": 90}
MINIMUMS = {"documents": 34, "questions": 70, "questions_zh": 30, "questions_en": 30,
            "ocr_questions": 8, "scanned_pdf": 3, "png": 3}
MIN_PER_PLAIN_FORMAT = 3  # md, txt, html, docx, pdf

CJK = re.compile(r"[\u3400-\u9fff]")
# Characters whose traditional form differs from the simplified one; enough to tell a
# traditional-script text from a simplified one in this corpus.
TRADITIONAL_ONLY = set(
    "這個們為於與說將會來時對學東車門頭發經過還體點從開關書長問題機電話區買賣證實際業務處議"
    "員寫讀語訊號請應當計設術網線價錢續辦費報銷單據準則風颱遲錄間總統場後備專聯絡週維驗貨產"
    "購測儀錶幾廳飯訓內裡沖節結領幣萬億額資項碼換強")
SENTENCE_END_ZH = re.compile(r"[。！？]")
SENTENCE_END_EN = re.compile(r"(?<=[.!?])\s+")


def is_traditional(text: str) -> bool:
    hits = sum(ch in TRADITIONAL_ONLY for ch in text)
    return hits >= 2 and hits / max(1, len(CJK.findall(text))) > 0.03


def count_sentences(paragraph: str, lang: str) -> int:
    if lang == "zh":
        parts = [p for p in SENTENCE_END_ZH.split(paragraph) if p.strip()]
    else:
        parts = [p for p in SENTENCE_END_EN.split(paragraph) if p.strip()]
    return max(1, len(parts))


def paragraphs(doc: dict) -> list[str]:
    return [p for s in doc["sections"] for p in s["paragraphs"]]


def full_text(doc: dict) -> str:
    parts = [doc["title"]]
    for s in doc["sections"]:
        parts.append(s["heading"])
        parts.extend(s["paragraphs"])
    return "\n".join(parts)


def check_document(doc: dict, problems: list[str]) -> None:
    name = doc.get("name", "?")
    missing = {"name", "lang", "format", "title", "sections"} - doc.keys()
    if missing:
        problems.append(f"doc {name}: missing keys {sorted(missing)}")
        return
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name):
        problems.append(f"doc {name}: name must be lowercase-hyphenated")
    lang, fmt = doc["lang"], doc["format"]
    if lang not in LANGS:
        problems.append(f"doc {name}: lang {lang!r} not in {LANGS}")
        return
    if fmt not in FORMATS:
        problems.append(f"doc {name}: format {fmt!r} not in {FORMATS}")
        return
    sections = doc["sections"]
    num_sections = (1, 1) if fmt == "png" else (2, 6)
    if not num_sections[0] <= len(sections) <= num_sections[1]:
        problems.append(f"doc {name}: {len(sections)} sections, allowed {num_sections}")
    for s in sections:
        if not s.get("heading") or not s.get("paragraphs"):
            problems.append(f"doc {name}: section without heading or paragraphs")
        for p in s.get("paragraphs", []):
            n = count_sentences(p, lang)
            if not 1 <= n <= 4:
                problems.append(f"doc {name}: paragraph has {n} sentences (1-4): {p[:40]}...")
    text = full_text(doc)
    if fmt == "png":
        lines = [doc["title"]] + [s["heading"] for s in sections] + paragraphs(doc)
        if len(lines) > PNG_MAX_LINES:
            problems.append(f"doc {name}: png has {len(lines)} lines, max {PNG_MAX_LINES}")
        for line in lines:
            if len(line) > PNG_LINE_CHARS[lang]:
                problems.append(f"doc {name}: png line over {PNG_LINE_CHARS[lang]} chars: {line}")
        return
    chars = len(text.replace("\n", ""))
    if not DOC_CHARS[0] <= chars <= DOC_CHARS[1]:
        problems.append(f"doc {name}: {chars} characters, allowed {DOC_CHARS}")
    if fmt == "scanned_pdf":
        for line in paragraphs(doc):
            if len(line) > SCANNED_LINE_CHARS[lang]:
                problems.append(f"doc {name}: scanned line over {SCANNED_LINE_CHARS[lang]} chars: {line}")


def check_question(q: dict, docs: dict[str, dict], problems: list[str]) -> None:
    qid = q.get("id", "?")
    missing = {"id", "lang", "question", "doc", "gold", "answer"} - q.keys()
    if missing:
        problems.append(f"{qid}: missing keys {sorted(missing)}")
        return
    if q["lang"] not in LANGS:
        problems.append(f"{qid}: lang {q['lang']!r} not in {LANGS}")
    has_cjk = bool(CJK.search(q["question"]))
    if has_cjk != (q["lang"] == "zh"):
        problems.append(f"{qid}: question script does not match lang {q['lang']}")
    if not q["answer"].strip():
        problems.append(f"{qid}: empty answer")
    doc = docs.get(q["doc"])
    if doc is None:
        problems.append(f"{qid}: doc {q['doc']!r} does not exist")
        return
    gold = q["gold"]
    if not GOLD_CHARS[0] <= len(gold) <= GOLD_CHARS[1]:
        problems.append(f"{qid}: gold is {len(gold)} chars, allowed {GOLD_CHARS}: {gold}")
    hits = [p for p in paragraphs(doc) if gold in p]
    if len(hits) != 1:
        problems.append(f"{qid}: gold found in {len(hits)} paragraphs of {q['doc']} (need 1): {gold}")
    elif hits[0].count(gold) != 1:
        problems.append(f"{qid}: gold occurs {hits[0].count(gold)} times in its paragraph: {gold}")
    others = [n for n, d in docs.items() if n != q["doc"] and gold in full_text(d)]
    if others:
        problems.append(f"{qid}: gold also appears in other documents {others}: {gold}")
    if gold in q["question"]:
        problems.append(f"{qid}: question copies the gold string verbatim: {gold}")


def summarize(corpus: list[dict], questions: list[dict], docs: dict[str, dict]) -> dict:
    traditional_docs = sorted(
        n for n, d in docs.items() if d["lang"] == "zh" and is_traditional(full_text(d)))
    known = [q for q in questions if q["doc"] in docs]
    trad_questions = [q for q in known if q["lang"] == "zh" and is_traditional(q["question"])]
    return {
        "documents": len(corpus),
        "documents_by_lang": Counter(d["lang"] for d in corpus),
        "documents_by_lang_format": Counter((d["lang"], d["format"]) for d in corpus),
        "traditional_docs": traditional_docs,
        "questions": len(questions),
        "questions_zh": sum(q["lang"] == "zh" for q in questions),
        "questions_en": sum(q["lang"] == "en" for q in questions),
        "questions_by_format": Counter(docs[q["doc"]]["format"] for q in known),
        "ocr_questions": sum(docs[q["doc"]]["format"] in OCR_FORMATS for q in known),
        "traditional_questions": len(trad_questions),
        "traditional_on_simplified": sum(q["doc"] not in traditional_docs for q in trad_questions),
        "questions_on_traditional": sum(q["doc"] in traditional_docs for q in known),
        "scanned_pdf": sum(d["format"] == "scanned_pdf" for d in corpus),
        "png": sum(d["format"] == "png" for d in corpus),
        "unasked": sorted(set(docs) - {q["doc"] for q in questions}),
    }


def check_coverage(counts: dict, corpus: list[dict], problems: list[str]) -> None:
    for key, minimum in MINIMUMS.items():
        if counts[key] < minimum:
            problems.append(f"need at least {minimum} {key}, have {counts[key]}")
    for fmt in FORMATS[:5]:
        if sum(d["format"] == fmt for d in corpus) < MIN_PER_PLAIN_FORMAT:
            problems.append(f"need at least {MIN_PER_PLAIN_FORMAT} {fmt} documents")
    if not 2 <= len(counts["traditional_docs"]) <= 3:
        problems.append(f"expected 2-3 traditional-Chinese documents, found {counts['traditional_docs']}")


def print_summary(c: dict) -> None:
    by_lang, by_lang_format = c["documents_by_lang"], c["documents_by_lang_format"]
    print(f"documents: {c['documents']}  (zh={by_lang['zh']}, en={by_lang['en']})")
    print("documents by format (zh/en):")
    for fmt in FORMATS:
        print(f"  {fmt:<12} {by_lang_format[('zh', fmt)]:>3} / {by_lang_format[('en', fmt)]:<3}")
    print(f"traditional-Chinese documents: {len(c['traditional_docs'])} {c['traditional_docs']}")
    print(f"questions: {c['questions']}  (zh={c['questions_zh']}, en={c['questions_en']})")
    print("questions by gold-document format: "
          + ", ".join(f"{fmt}={c['questions_by_format'][fmt]}" for fmt in FORMATS))
    print(f"OCR questions (scanned_pdf/png): {c['ocr_questions']}")
    print(f"traditional-script questions: {c['traditional_questions']}"
          f" (against simplified documents: {c['traditional_on_simplified']})")
    print(f"questions against traditional documents: {c['questions_on_traditional']}")
    if c["unasked"]:
        print(f"documents with no question (distractors): {c['unasked']}")


def main() -> int:
    corpus = json.loads((HERE / "corpus.json").read_text(encoding="utf-8"))
    questions = json.loads((HERE / "questions.json").read_text(encoding="utf-8"))
    problems: list[str] = []

    docs: dict[str, dict] = {}
    for doc in corpus:
        if doc.get("name") in docs:
            problems.append(f"doc {doc['name']}: duplicate name")
        docs[doc.get("name", "?")] = doc
        check_document(doc, problems)
    ids = Counter(q.get("id") for q in questions)
    problems += [f"{qid}: duplicate id" for qid, n in ids.items() if n > 1]
    for q in questions:
        check_question(q, docs, problems)

    counts = summarize(corpus, questions, docs)
    check_coverage(counts, corpus, problems)
    print_summary(counts)
    if problems:
        print(f"\nFAILED: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\nOK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
