"""Meeting transcripts: from a file (txt / md / docx / srt / vtt) to speaker turns.

Owns recognising who speaks ("张伟：", "Maria:", "**Maria**:", a subtitle cue's "<v Maria>" voice
tag or name prefix), header lines that are metadata rather than speech ("日期：2024-12-02",
"Title: ..."), the meeting's date and title when the file states them, and every way a transcript
can be bad (empty, too large, no speaker turns, unknown type) as one `TranscriptError` line.
Knows nothing of models, prompts or minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from luodi.apps.dates import parse_meeting_date
from luodi.errors import DocumentError

MAX_TRANSCRIPT_BYTES = 5 * 2**20  # a day of talk is ~1 MB of text; more is not a transcript
SUFFIXES = (".txt", ".md", ".docx", ".srt", ".vtt")

# Header keys that look like "Name: text" but describe the meeting (lower-cased for English).
_META_TITLE = {"标题", "主题", "会议主题", "会议", "title", "meeting", "subject", "topic"}
_META_DATE = {"日期", "时间", "会议时间", "date", "time"}
_META_OTHER = {"地点", "参会人", "参会人员", "出席", "记录", "记录人", "主持", "主持人", "location", "attendees",
               "participants", "place", "notes", "recorder", "host", "agenda", "议程"}
# "[00:01:02] 张伟：text", "**Maria**: text", "Maria Lopez: text", "- Maria: text"
_TURN = re.compile(
    r"^\s*(?:[-*]\s+)?(?:\[?\(?\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?\]?\)?\s*)?"
    r"(?:\*\*)?(?P<name>[A-Za-z][\w.'-]*(?: [A-Z][\w.'-]*){0,2}|[\u4e00-\u9fff·]{1,6})(?:\*\*)?"
    r"\s*(?:\*\*)?[:：](?:\*\*)?\s*(?P<text>.*)$")
_VOICE = re.compile(r"^<v(?:\.[\w.-]+)?\s+(?P<name>[^>]+)>(?P<text>.*?)(?:</v>)?$")
_CUE_TIME = re.compile(r"^\s*(?:\d{1,2}:)?\d{2}:\d{2}[.,]\d{3}\s*-->")
_TAG = re.compile(r"</?[^>]+>")


class TranscriptError(DocumentError):
    """A transcript that cannot be turned into speaker turns."""


@dataclass(frozen=True, slots=True)
class Turn:
    index: int  # 0-based position in the transcript: the evidence minutes point back to
    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class Transcript:
    turns: tuple[Turn, ...]
    title: str | None = None
    date: date | None = None

    @property
    def speakers(self) -> tuple[str, ...]:
        """Each speaker once, in order of first turn."""
        return tuple(dict.fromkeys(t.speaker for t in self.turns))


def read_transcript(path: Path, meeting_date: date | None = None) -> Transcript:
    """The speaker turns of the transcript at `path`; `meeting_date` overrides a date the file states."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TranscriptError(f"{path}: {suffix or 'no suffix'} is not a transcript type; "
                              f"use one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise TranscriptError(f"{path}: no such file; check the path")
    size = path.stat().st_size
    if size > MAX_TRANSCRIPT_BYTES:
        raise TranscriptError(f"{path}: {size / 2**20:.1f} MB is too large for a transcript "
                              f"(at most {MAX_TRANSCRIPT_BYTES // 2**20} MB); split the meeting into files")
    text = _docx_text(path) if suffix == ".docx" else _decode(path)
    return parse_transcript(text, name=str(path), subtitles=suffix in (".srt", ".vtt"), meeting_date=meeting_date)


def parse_transcript(text: str, *, name: str = "transcript", subtitles: bool = False,
                     meeting_date: date | None = None) -> Transcript:
    """Speaker turns from transcript text (subtitle cues when `subtitles`); consecutive lines or cues
    of one speaker form one turn."""
    if not text.strip():
        raise TranscriptError(f"{name}: the transcript is empty")
    lines = _cue_lines(text) if subtitles else text.splitlines()
    title, stated_date, pairs = _speaker_lines(lines)
    if not pairs:
        raise TranscriptError(f"{name}: no speaker turns found; write each turn as 'Name: text' "
                              "(or '张伟：……'), or give subtitles with '<v Name>' voice tags")
    return Transcript(turns=_merge_turns(pairs), title=title, date=meeting_date or stated_date)


def _speaker_lines(lines: list[str]) -> tuple[str | None, date | None, list[tuple[str, str]]]:
    """(title, date, [(speaker, text)]) — a line with no speaker continues the current turn."""
    title: str | None = None
    stated: date | None = None
    pairs: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.strip().lstrip("#").strip()
        if not line:
            continue
        match = _VOICE.match(line) or _TURN.match(line)
        key = match["name"].strip().lower() if match else ""
        if match and key in _META_TITLE:
            title = title or match["text"].strip() or None
        elif match and key in _META_DATE:
            stated = stated or parse_meeting_date(match["text"])
        elif match and key in _META_OTHER:
            continue
        elif match and match["text"].strip():
            pairs.append((match["name"].strip(), _TAG.sub("", match["text"]).strip()))
        elif pairs and not match:
            pairs[-1] = (pairs[-1][0], _join(pairs[-1][1], _TAG.sub("", line).strip()))
        elif not pairs and title is None and not match and raw.lstrip().startswith("#"):
            title = line  # a Markdown heading before the first turn names the meeting
        elif not pairs and stated is None and not match:
            stated = parse_meeting_date(line)
    return title, stated, pairs


def _merge_turns(pairs: list[tuple[str, str]]) -> tuple[Turn, ...]:
    turns: list[Turn] = []
    for speaker, text in pairs:
        if turns and turns[-1].speaker == speaker:
            turns[-1] = Turn(turns[-1].index, speaker, _join(turns[-1].text, text))
        else:
            turns.append(Turn(len(turns), speaker, text))
    return tuple(turns)


def _join(a: str, b: str) -> str:
    # Chinese runs on without a space; English words need one.
    return a + b if a and re.match(r"[\u3000-\u9fff]", a[-1]) else f"{a} {b}"


def _cue_lines(text: str) -> list[str]:
    """SRT / WebVTT: the text of each cue as lines, numbering, timings, headers and notes dropped.
    A cue line with no speaker of its own continues the previous speaker's turn."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").lstrip("\ufeff")):
        rows = [r.strip() for r in block.strip().splitlines() if r.strip()]
        if rows and rows[0].startswith("NOTE"):
            out.append(" ".join(rows)[4:].strip())  # a note may state the date: "NOTE Date: 2024-10-07"
            continue
        if not rows or rows[0].startswith(("WEBVTT", "STYLE", "REGION")):
            continue
        timing = next((i for i, r in enumerate(rows) if _CUE_TIME.match(r)), None)
        if timing is not None:
            out.extend(rows[timing + 1:])
    return out


def _decode(path: Path) -> str:
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise TranscriptError(f"{path}: not UTF-8 or GB18030 text; save it as UTF-8")


def _docx_text(path: Path) -> str:
    try:
        import docx
    except ImportError as exc:
        raise TranscriptError("reading .docx needs python-docx: pip install 'luodi[kb]'") from exc
    try:
        return "\n".join(p.text for p in docx.Document(str(path)).paragraphs)
    except Exception as exc:  # noqa: BLE001 — any failure on a bad file is the file's
        raise TranscriptError(f"{path}: cannot read this .docx file ({type(exc).__name__}); "
                              "re-save it in Word or LibreOffice") from exc
