"""`index_terms` / `query_terms`: what BM25 matches on. Oracle: hand-checked jieba segmentations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from luodi.kb.terms import STOP_WORDS, index_terms, normalize, query_terms


def test_traditional_folds_to_simplified() -> None:
    assert normalize("知識庫與軟體") == "知识库与软体"
    # a traditional query shares words with simplified text, and the other way round
    assert set(query_terms("知識庫")) <= set(index_terms("我们的知识库很大").split())
    assert set(query_terms("知识库")) <= set(index_terms("我們的知識庫很大").split())


def test_chinese_is_segmented_in_search_mode() -> None:
    words = index_terms("我们的知识库支持全文检索").split()
    assert {"我们", "知识", "知识库", "全文", "检索", "全文检索"} <= set(words)
    assert "的" in words  # the index keeps everything; only queries drop stop words


def test_english_is_lowercased_and_nfkc_normalized() -> None:
    assert index_terms("Hello, WORLD!") == "hello world"
    assert index_terms("ＡＢＣ　１２３") == "abc 123"  # full-width letters, digits and space


def test_query_terms_drop_punctuation_stop_words_and_repeats() -> None:
    assert query_terms("What is the BM25 ranking? BM25!") == ["bm25", "ranking"]
    assert query_terms("什麼是知識庫？") == ["知识", "知识库"]
    assert query_terms("what is it") == ["what", "is", "it"]  # nothing else left: keep them
    assert query_terms("?! 。，") == []
    assert {"the", "的", "什么"} <= STOP_WORDS


def test_jieba_is_quiet_and_caches_under_luodi_home(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "LUODI_HOME": str(home)}
    result = subprocess.run([sys.executable, "-c", "from luodi.kb.terms import index_terms;"
                             "print(index_terms('知识库'))"],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["知识", "知识库"]
    assert result.stderr == ""
    assert list((home / "cache").glob("jieba*.cache"))
    assert list(cwd.iterdir()) == []
