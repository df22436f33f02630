"""`luodi kb …` and `luodi ask` as a user runs them (a subprocess, its own $LUODI_HOME): the
bundled model answers from a knowledge base, and the sources it prints include the gold passage;
bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from documents import write_text
from model_cache import cache_home, pulled_model_path

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("cli-kb-home")
    builds = cache_home() / "build"  # native kernels compiled once for the whole suite
    builds.mkdir(parents=True, exist_ok=True)
    (home / "build").symlink_to(builds, target_is_directory=True)
    return home


def luodi(home: Path, *args: str | bytes) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUODI_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    message = " ".join(line for line in result.stderr.splitlines() if line.strip())
    for needle in needles:
        assert needle in message, message


@pytest.fixture(scope="module")
def handbook(home, tmp_path_factory) -> str:
    docs = tmp_path_factory.mktemp("docs") / "handbook"
    docs.mkdir()
    write_text(docs / "travel.md", "# Travel\n\nHotel costs in Shanghai are reimbursed up to 650 yuan per night.\n")
    write_text(docs / "leave.md", "# 年假\n\n员工工作满五年后，每年享有15天带薪年假。\n")
    write_text(docs / "broken.pdf", "not a pdf")
    assert luodi(home, "kb", "create", "hb").returncode == 0
    added = luodi(home, "kb", "add", "hb", str(docs))
    assert added.returncode == 0, added.stderr
    assert "2 added" in added.stdout and "1 failed" in added.stdout
    assert "broken.pdf" in added.stderr and "Traceback" not in added.stderr
    return "hb"


def test_ls_and_search_json(home, handbook):
    listed = luodi(home, "kb", "ls", "hb")
    assert "handbook/travel.md" in listed.stdout and "handbook/leave.md" in listed.stdout
    hits = json.loads(luodi(home, "kb", "search", "hb", "工作五年的年假", "--json").stdout)
    assert hits[0]["source"] == "handbook/leave.md" and "15天" in hits[0]["text"]
    assert set(hits[0]) == {"text", "source", "page", "section", "score"}


def test_ask_on_the_bundled_model_lists_the_gold_passage(home, handbook):
    model = str(pulled_model_path(SMOLLM2))
    result = luodi(home, "ask", "hb", "What is the hotel limit in Shanghai?", "--model", model, "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    answer, _, sources = result.stdout.partition("Sources:")
    assert answer.strip()
    assert "handbook/travel.md § Travel" in sources and "650 yuan per night" in sources


def test_bad_input_is_one_line(home, handbook, tmp_path):
    assert_one_line_error(luodi(home, "kb", "search", "nope", "x"), 'unknown knowledge base "nope"', "luodi kb create")
    assert_one_line_error(luodi(home, "kb", "create", "hb"), "already exists")
    assert_one_line_error(luodi(home, "kb", "create", "../x"), "invalid knowledge base name")
    assert_one_line_error(luodi(home, "kb", "add", "hb", str(tmp_path / "missing")), "no such file or folder")
    assert_one_line_error(luodi(home, "kb", "rm", "hb", "nothing.md"), "no document")
    assert_one_line_error(luodi(home, "kb", "search", "hb", "  "), "query is empty")
    assert_one_line_error(luodi(home, "kb", "create", "x", "--embedder", "bogus"), "unknown embedder")


def test_arguments_and_file_names_that_are_not_utf8_are_one_line_errors(home, handbook, tmp_path):
    """Python holds argv and file names that are not UTF-8 as lone surrogates; they are refused
    (or their file skipped) with one line, never a traceback."""
    bad = b"\xed\xa0\x80"  # the UTF-8 form of U+D800, which UTF-8 forbids
    assert_one_line_error(luodi(home, "kb", "search", "hb", b"leave " + bad), "query is not valid Unicode")
    assert_one_line_error(luodi(home, "ask", "hb", bad + b"?"), "question is not valid Unicode")
    assert_one_line_error(luodi(home, "kb", "rm", "hb", bad + b".md"), "document name is not valid Unicode")
    assert_one_line_error(luodi(home, "kb", "create", bad), "invalid knowledge base name")
    folder = tmp_path / "odd"
    folder.mkdir()
    write_text(Path(os.fsdecode(bytes(folder) + b"/" + bad + b".md")), "# Odd\n\nan oddly named file\n")
    write_text(folder / "fine.md", "# Fine\n\na plainly named file\n")
    added = luodi(home, "kb", "add", "hb", str(folder))
    assert added.returncode == 0 and "Traceback" not in added.stderr, added.stderr
    assert "1 added" in added.stdout and "1 failed" in added.stdout
    assert "odd/\\udced\\udca0\\udc80.md" in added.stderr and "not UTF-8" in added.stderr
    assert "odd/fine.md" in luodi(home, "kb", "ls", "hb").stdout


def test_the_kb_folder_and_files_are_private(home, handbook):
    paths = [home / "kb", *(home / "kb").rglob("*")]
    assert home / "kb" / "hb.sqlite" in paths
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
            if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)} == {}
