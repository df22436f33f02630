"""`luodi minutes` as a user runs it: JSON that validates, Markdown, one-line errors with exit != 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from luodi.apps.minutes import minutes_schema
from model_cache import cache_home, pulled_model_path

EVAL = Path(__file__).resolve().parents[2] / "benchmarks" / "apps_eval"


def luodi(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUODI_HOME": str(cache_home())}
    return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True, env=env, timeout=900)


def test_json_minutes_validate(tmp_path):
    model = str(pulled_model_path("smollm2-135m-instruct"))
    result = luodi("minutes", str(EVAL / "en_hiring.vtt"), "--json", "-m", model, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    minutes = json.loads(result.stdout)
    jsonschema.validate(minutes, minutes_schema(["Alex", "Sam"]))
    assert minutes["date"] == "2024-10-07"
    assert ("Alex", "2024-10-09") in {(a["owner"], a["due"]) for a in minutes["action_items"]}


def test_markdown_minutes_with_a_given_date():
    model = str(pulled_model_path("smollm2-135m-instruct"))
    result = luodi("minutes", str(EVAL / "zh_hr.srt"), "--date", "2024-12-20", "-m", model, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "**Date:** 2024-12-20" in result.stdout
    assert "| 孙涛 |" in result.stdout and "2025-01-10" in result.stdout


@pytest.mark.parametrize(("content", "suffix", "needle"), [
    ("", ".txt", "the transcript is empty"),
    ("We talked about the plan and then left.\n", ".txt", "no speaker turns found"),
    ("A: hi\n", ".pdf", "not a transcript type"),
])
def test_bad_input_is_one_line(tmp_path, content, suffix, needle):
    path = tmp_path / f"t{suffix}"
    path.write_text(content, encoding="utf-8")
    result = luodi("minutes", str(path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr


def test_fifty_megabytes_is_refused(tmp_path):
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.truncate(50 * 2**20)
    result = luodi("minutes", str(path))
    assert result.returncode != 0 and "Traceback" not in result.stderr and "too large" in result.stderr


def test_bad_date():
    result = luodi("minutes", str(EVAL / "zh_hr.srt"), "--date", "20 Dec")
    assert result.returncode != 0 and "YYYY-MM-DD" in result.stderr
