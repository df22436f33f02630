"""The words BM25 matches on, for chunks (`index_terms`) and for queries (`query_terms`).

Both sides go through the same steps, so a query matches a chunk whenever they share a word:
NFKC (full-width → half-width), traditional → simplified Chinese (opencc `t2s`), lowercase, then
jieba in search mode, which emits the sub-words of a long word as well (知识库 → 知识, 知识库), so a
query for 知识 finds a chunk about 知识库 and the other way round. Tokens without a letter or digit
(spaces, punctuation) are dropped.

This module knows nothing about stores: they index the space-joined `index_terms` string with
their own full-text engine (SQLite FTS5, PostgreSQL `to_tsvector('simple', ...)`).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from luodi.paths import luodi_home

if TYPE_CHECKING:
    import jieba
    import opencc

# Words a query can drop without losing what it asks for: BM25 would give them almost no weight
# anyway, and dropping them keeps the OR query short. Kept deliberately small.
STOP_WORDS = frozenset(
    "a an and are as at be by do does for from how i in is it of on or the this that to was what "
    "when where which who why with you your "
    "的 了 是 在 和 与 及 或 吗 呢 吧 啊 么 什么 怎么 怎样 如何 哪些 哪个 为什么 请问 我 你 他 她 它 我们 "
    "这 那 这个 那个 有 也 都 就 而 但".split()
)

_init_lock = threading.Lock()


@functools.cache
def _converter() -> opencc.OpenCC:
    import opencc

    return opencc.OpenCC("t2s")


def _cache_dir() -> Path:
    """Where jieba keeps its prefix-dictionary cache: luodi_home()/cache, else the temp dir."""
    path = luodi_home() / "cache"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path(tempfile.gettempdir())
    return path if os.access(path, os.W_OK) else Path(tempfile.gettempdir())


@functools.cache
def _tokenizer() -> jieba.Tokenizer:
    import jieba

    tokenizer = jieba.Tokenizer()
    tokenizer.tmp_dir = str(_cache_dir())
    # jieba logs "Building prefix dict ..." at DEBUG to stderr on its own handler; quiet it while
    # it loads, and leave its logger as we found it.
    level = jieba.default_logger.level
    jieba.default_logger.setLevel(logging.WARNING)
    try:
        with _init_lock:
            tokenizer.initialize()
    finally:
        jieba.default_logger.setLevel(level)
    return tokenizer


def normalize(text: str) -> str:
    """NFKC, traditional → simplified, lowercase: the form both chunks and queries are matched in."""
    return _converter().convert(unicodedata.normalize("NFKC", text)).lower()


def _words(text: str) -> list[str]:
    tokens = _tokenizer().cut_for_search(normalize(text))
    return [t for t in (tok.strip() for tok in tokens) if any(ch.isalnum() for ch in t)]


def index_terms(text: str) -> str:
    """The chunk's words for the full-text index, space-separated: '知识 知识库 hello world'."""
    return " ".join(_words(text))


def query_terms(text: str) -> list[str]:
    """A query's distinct words in order, without `STOP_WORDS` (unless nothing else is left)."""
    words = list(dict.fromkeys(_words(text)))
    kept = [w for w in words if w not in STOP_WORDS]
    return kept or words
