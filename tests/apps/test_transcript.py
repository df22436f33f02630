"""Speaker turns from each transcript format, metadata lines kept apart, bad input as one error."""

from datetime import date
from pathlib import Path

import pytest

from luodi.apps.transcript import MAX_TRANSCRIPT_BYTES, TranscriptError, Turn, parse_transcript, read_transcript

EXPECTED = (Turn(0, "张伟", "大家好。我们开始吧。"), Turn(1, "Maria Lopez", "Sure, let's start."), Turn(2, "张伟", "好的。"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_plain_text(tmp_path):
    text = "会议主题：周会\n日期：2024年12月2日\n参会人：张伟、Maria\n张伟：大家好。\n我们开始吧。\nMaria Lopez: Sure, let's start.\n张伟：好的。\n"
    t = read_transcript(write(tmp_path, "m.txt", text))
    assert t.turns == EXPECTED
    assert (t.title, t.date, t.speakers) == ("周会", date(2024, 12, 2), ("张伟", "Maria Lopez"))


def test_markdown_with_bold_names_and_timestamps(tmp_path):
    text = "# 周会\n\nDate: 2024-12-02\n\n**张伟**：大家好。\n**张伟**：我们开始吧。\n[00:01:05] **Maria Lopez**: Sure, let's start.\n- 张伟: 好的。\n"
    t = read_transcript(write(tmp_path, "m.md", text))
    assert t.turns == EXPECTED  # two consecutive lines of one speaker are one turn
    assert (t.title, t.date) == ("周会", date(2024, 12, 2))


def test_srt(tmp_path):
    text = ("1\n00:00:01,000 --> 00:00:03,000\n张伟：大家好。\n\n2\n00:00:03,500 --> 00:00:05,000\n我们开始吧。\n\n"
            "3\n00:00:05,500 --> 00:00:07,000\nMaria Lopez: Sure, let's start.\n\n4\n00:00:08,000 --> 00:00:09,000\n张伟：好的。\n")
    t = read_transcript(write(tmp_path, "m.srt", text), meeting_date=date(2024, 12, 2))
    assert t.turns == EXPECTED  # a cue with no name continues the speaker before it
    assert t.date == date(2024, 12, 2)


def test_vtt_voice_tags(tmp_path):
    text = ("WEBVTT\n\nNOTE Date: 2024-12-02\n\n00:01.000 --> 00:03.000\n<v 张伟>大家好。</v>\n\n"
            "cue-2\n00:03.500 --> 00:05.000\n<v 张伟>我们开始吧。\n\n00:05.500 --> 00:07.000\n<v.loud Maria Lopez>Sure, let's start.</v>\n\n"
            "00:08.000 --> 00:09.000\n<v 张伟>好的。</v>\n")
    t = read_transcript(write(tmp_path, "m.vtt", text))
    assert t.turns == EXPECTED
    assert t.date == date(2024, 12, 2)


def test_docx(tmp_path):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    for line in ("日期：2024-12-02", "张伟：大家好。", "我们开始吧。", "Maria Lopez: Sure, let's start.", "张伟：好的。"):
        document.add_paragraph(line)
    document.save(str(tmp_path / "m.docx"))
    t = read_transcript(tmp_path / "m.docx")
    assert t.turns == EXPECTED
    assert t.date == date(2024, 12, 2)


def test_given_date_wins_over_the_stated_one():
    t = parse_transcript("Date: 2024-12-02\nA: hi\n", meeting_date=date(2025, 1, 1))
    assert t.date == date(2025, 1, 1)


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("empty.txt", "", "empty"),
    ("blank.txt", "  \n\n ", "empty"),
    ("prose.txt", "We met and talked about things\nthen we left\n", "no speaker turns"),
    ("cues.srt", "1\n00:00:01,000 --> 00:00:02,000\nhello there\n", "no speaker turns"),
    ("notes.pdf", "A: hi", "not a transcript type"),
])
def test_bad_transcripts(tmp_path, name, content, needle):
    with pytest.raises(TranscriptError, match=needle):
        read_transcript(write(tmp_path, name, content))


def test_too_large_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.truncate(MAX_TRANSCRIPT_BYTES + 1)
    with pytest.raises(TranscriptError, match="too large"):
        read_transcript(path)


def test_gb18030_text(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("张伟：大家好。\n李娜：好的。\n".encode("gb18030"))
    assert read_transcript(path).speakers == ("张伟", "李娜")
