"""`luodi support` and `luodi schedule` as a user runs them: JSON answers, and bad input (a missing
knowledge base, a malformed or huge calendar, a bad --now) as one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import SMOLLM2, assert_one_line_error

from model_cache import cache_home, pulled_model_path

ICS = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:r1@t\r\nSUMMARY:Design review\r\n"
       "DTSTART:20261208T100000\r\nDTEND:20261208T110000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("assist-home")
    builds = cache_home() / "build"  # native kernels compiled once for the whole suite
    builds.mkdir(parents=True, exist_ok=True)
    (home / "build").symlink_to(builds, target_is_directory=True)
    return home


def luodi(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUODI_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=600)


@pytest.fixture(scope="module")
def model() -> str:
    return str(pulled_model_path(SMOLLM2))


def test_support_answers_and_hands_off(home, model, tmp_path_factory):
    pytest.importorskip("apsw", reason="pip install 'luodi[kb]'")
    docs = tmp_path_factory.mktemp("help")
    (docs / "wifi.md").write_text("# Wi-Fi\nThe Lumen T2 connects to 2.4 GHz Wi-Fi only; 5 GHz is not supported.\n")
    assert luodi(home, "kb", "create", "help").returncode == 0
    assert luodi(home, "kb", "add", "help", str(docs)).returncode == 0
    answered = luodi(home, "support", "--kb", "help", "-m", model, "-n", "30", "--ask",
                     "Does the Lumen T2 work with 5 GHz Wi-Fi?", "--json")
    assert answered.returncode == 0, answered.stderr
    reply = json.loads(answered.stdout)
    assert reply["handoff"] is False and reply["answer"]
    assert [s["source"].rsplit("/", 1)[-1] for s in reply["sources"]] == ["wifi.md"]
    off_topic = json.loads(luodi(home, "support", "--kb", "help", "-m", model, "--ask",
                                 "What is the capital of Australia?", "--json").stdout)
    assert off_topic["handoff"] is True and off_topic["sources"] == []


def test_support_missing_kb_is_one_line(home):
    assert_one_line_error(luodi(home, "support", "--kb", "nope", "--ask", "hi"), "nope")


def test_schedule_applies_with_yes(home, model, tmp_path):
    icalendar = pytest.importorskip("icalendar")
    path = tmp_path / "cal.ics"
    path.write_text(ICS)
    result = luodi(home, "schedule", "-c", str(path), "-m", model, "--now", "2026-12-07T09:00", "--yes", "--json",
                   "--ask", "move Tuesday's review to Thursday 3pm")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["applied"] is True
    (event,) = icalendar.Calendar.from_ical(path.read_bytes()).walk("VEVENT")
    assert event["DTSTART"].dt.isoformat() == "2026-12-10T15:00:00"


def test_schedule_without_yes_changes_nothing_when_piped(home, model, tmp_path):
    path = tmp_path / "cal.ics"
    path.write_text(ICS)
    result = luodi(home, "schedule", "-c", str(path), "-m", model, "--now", "2026-12-07T09:00",
                   stdin="cancel the review on Tuesday\n")
    assert result.returncode == 0, result.stderr
    assert "delete: Design review" in result.stderr and "not applied" in result.stdout
    assert path.read_bytes() == ICS.encode()


@pytest.mark.parametrize(("content", "args", "needle"), [
    ("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART:nope\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n", (), "malformed iCalendar"),
    ("hello", (), "not an iCalendar file"),
    (ICS, ("--now", "yesterday"), "--now 'yesterday'"),
])
def test_schedule_bad_input_is_one_line(home, tmp_path, content, args, needle):
    path = tmp_path / "cal.ics"
    path.write_text(content)
    before = path.read_bytes()
    assert_one_line_error(luodi(home, "schedule", "-c", str(path), *args, "--ask", "what is on today?"), needle)
    assert path.read_bytes() == before


def test_schedule_huge_file(home, tmp_path):
    path = tmp_path / "big.ics"
    with path.open("wb") as f:
        f.truncate(50 * 2**20)
    assert_one_line_error(luodi(home, "schedule", "-c", str(path), "--ask", "hi"), "too large")
