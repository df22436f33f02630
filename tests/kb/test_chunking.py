"""Chunking: hand-computed chunks under a word counter, and properties over generated documents.

The counter makes token counts easy to do by hand: a token is a CJK ideograph or a run of other
non-space characters ("Hello there." is 2, "好的；" is 3).
"""

import random
import re

import pytest

from luodi.errors import InvalidParameterError
from luodi.kb.chunking import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS, chunk_blocks, split_sentences
from luodi.kb.document import Block, Chunk

_TOKEN = re.compile(r"[\u4e00-\u9fff]|[^\s\u4e00-\u9fff]+")


def words(text: str) -> int:
    return len(_TOKEN.findall(text))


def texts(chunks: list[Chunk]) -> list[str]:
    return [c.text for c in chunks]


def test_split_sentences_english_chinese_and_lines():
    assert split_sentences("  Hello there. How are you?  Fine!!\nNext 3.14 ok ") == [
        ("", "Hello there."), (" ", "How are you?"), ("  ", "Fine!!"), ("\n", "Next 3.14 ok")]  # fmt: skip
    assert split_sentences("今天天气很好。我们去公园吧！你觉得呢？好的；走吧……他说：“好。”然后") == [
        ("", "今天天气很好。"), ("", "我们去公园吧！"), ("", "你觉得呢？"), ("", "好的；"),
        ("", "走吧……"), ("", "他说：“好。”"), ("", "然后")]  # fmt: skip
    # No space after the full stop: a decimal or a domain is not a sentence end.
    assert split_sentences("Version 1.5 of luodi.dev is out.") == [("", "Version 1.5 of luodi.dev is out.")]
    text = ' He said "Stop." Then left!  下一句。Next (really.) end '
    assert "".join(lead + s for lead, s in split_sentences(text)) == text.strip()
    assert split_sentences(" \n ") == []


def test_headings_start_chunks_and_carry_section_and_page():
    blocks = [
        Block("Intro", page=1, heading=True),
        Block("Luodi runs models offline.", page=1, section="Intro"),
        Block("Install", page=2, heading=True),
        Block("From PyPI", page=2, heading=True),  # no text between: one title for both
        Block("Run pip install luodi.", page=3, section="From PyPI"),
        Block("   ", page=3),
        Block("Appendix", page=4, heading=True),  # a heading with nothing after it is kept
    ]
    assert chunk_blocks(blocks, words) == [
        Chunk("Intro\n\nLuodi runs models offline.", page=1, section="Intro", ordinal=0),
        Chunk("Install\nFrom PyPI\n\nRun pip install luodi.", page=2, section="From PyPI", ordinal=1),
        Chunk("Appendix", page=4, section="Appendix", ordinal=2),
    ]


def test_section_changes_split_when_loader_marks_no_headings():
    blocks = [Block("a.", page=1), Block("b.", page=1, section="S1"), Block("c.", page=2, section="S1"),
              Block("d.", page=2, section="S2")]  # fmt: skip
    assert chunk_blocks(blocks, words) == [
        Chunk("a.", page=1, section=None, ordinal=0),
        Chunk("b.\n\nc.", page=1, section="S1", ordinal=1),
        Chunk("d.", page=2, section="S2", ordinal=2),
    ]


def test_long_paragraph_splits_at_sentences_with_overlap():
    # Sentences of 3, 3, 3, 3, 2 tokens; budget 12: the first four fill chunk 0, and chunk 1
    # repeats the last whole sentence that fits in 4 overlap tokens.
    text = "One two three. Four five six. Seven eight nine. Ten eleven twelve. Thirteen fourteen."
    chunks = chunk_blocks([Block(text, page=7)], words, max_tokens=12, overlap_tokens=4)
    assert texts(chunks) == [
        "One two three. Four five six. Seven eight nine. Ten eleven twelve.",
        "Ten eleven twelve. Thirteen fourteen.",
    ]
    assert [(c.page, c.section, c.ordinal) for c in chunks] == [(7, None, 0), (7, None, 1)]


def test_paragraph_that_fits_moves_whole_and_overlap_crosses_paragraphs():
    blocks = [Block("Alpha beta gamma. Delta epsilon.", page=1),  # 5 tokens
              Block("Zeta eta theta iota. Kappa lambda mu nu.", page=2)]  # 8 tokens  # fmt: skip
    chunks = chunk_blocks(blocks, words, max_tokens=12, overlap_tokens=4)
    assert texts(chunks) == [
        "Alpha beta gamma. Delta epsilon.",
        "Delta epsilon.\n\nZeta eta theta iota. Kappa lambda mu nu.",
    ]
    assert [c.page for c in chunks] == [1, 1]  # chunk 1 begins with the overlapped sentence from page 1


def test_chinese_sentences_split_and_overlap():
    # 今天天气很好。=7, 我们去公园吧！=7, 你觉得呢？=5, 好的；=3, 走吧……=3 tokens.
    text = "今天天气很好。我们去公园吧！你觉得呢？好的；走吧……"
    chunks = chunk_blocks([Block(text)], words, max_tokens=16, overlap_tokens=8)
    assert texts(chunks) == [
        "今天天气很好。我们去公园吧！",
        "我们去公园吧！你觉得呢？好的；",
        "你觉得呢？好的；走吧……",
    ]


def test_sentence_longer_than_a_chunk_is_cut_at_words_then_characters():
    text = "one two three four five six seven eight nine ten eleven twelve"
    chunks = chunk_blocks([Block(text)], words, max_tokens=8, overlap_tokens=2)
    # A cut sentence has one piece per chunk: the overlap never carries a whole chunk over.
    assert texts(chunks) == ["one two three four five six seven eight", "nine ten eleven twelve"]
    chunks = chunk_blocks([Block("abcdefghijklmnopqrst")], len, max_tokens=8, overlap_tokens=0)
    assert texts(chunks) == ["abcdefgh", "ijklmnop", "qrst"]
    chinese = "人工智能正在改变我们的生活方式和工作方式"  # 20 ideographs, no punctuation
    assert texts(chunk_blocks([Block(chinese)], words, max_tokens=8, overlap_tokens=0)) == [
        "人工智能正在改变", "我们的生活方式和", "工作方式"]  # fmt: skip


def test_title_is_prefixed_to_every_chunk_of_its_section_and_counted():
    blocks = [
        Block("Setup guide", heading=True),
        Block("Step one is here. Step two is here. Step three is here."),
    ]
    chunks = chunk_blocks(blocks, words, max_tokens=10, overlap_tokens=0)
    assert texts(chunks) == [
        "Setup guide\n\nStep one is here. Step two is here.",
        "Setup guide\n\nStep three is here.",
    ]
    assert all(words(t) <= 10 for t in texts(chunks))
    # A title over half the budget would crowd every chunk: it is kept once, as body text.
    long_title = [Block("A very long heading text here", page=3, heading=True), Block("Body.", page=3)]
    assert chunk_blocks(long_title, words, max_tokens=8, overlap_tokens=0) == [
        Chunk(
            "A very long heading text here\n\nBody.",
            page=3,
            section="A very long heading text here",
            ordinal=0,
        )
    ]


def test_empty_input_and_bad_budgets():
    assert chunk_blocks([], words) == []
    assert chunk_blocks([Block(""), Block(" \n ")], words) == []
    with pytest.raises(InvalidParameterError, match="max_tokens=4"):
        chunk_blocks([Block("x")], words, max_tokens=4)
    with pytest.raises(InvalidParameterError, match="overlap_tokens=60 .* half of max_tokens"):
        chunk_blocks([Block("x")], words, max_tokens=100, overlap_tokens=60)
    assert DEFAULT_OVERLAP_TOKENS <= DEFAULT_MAX_TOKENS // 2


_EN = [
    "the",
    "model",
    "reads",
    "each",
    "passage",
    "and",
    "writes",
    "a",
    "vector",
    "so",
    "search",
    "can",
    "find",
    "related",
    "text",
]
_ZH = "我们今天讨论知识库检索模型向量文本中文句子分词问题答案"


def _random_paragraph(rng: random.Random) -> str:
    """English sentences end before a space or a line break; Chinese ones need neither."""
    parts = []
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.5:
            parts.append(" ".join(rng.choices(_EN, k=rng.randint(1, 12))).capitalize() + rng.choice(".!?"))
            parts.append(rng.choice([" ", "\n"]))
        else:
            parts.append(
                "".join(rng.choices(_ZH, k=rng.randint(2, 14))) + rng.choice(["。", "！", "？", "；", "……"])
            )
            parts.append(rng.choice(["", " "]))
    return "".join(parts)


def _random_document(rng: random.Random) -> list[Block]:
    blocks, page = [], 1
    for _ in range(rng.randint(1, 25)):
        page += rng.random() < 0.3
        if rng.random() < 0.15:
            blocks.append(
                Block(" ".join(rng.choices(_EN, k=rng.randint(1, 4))).title(), page=page, heading=True)
            )
        else:
            blocks.append(Block(_random_paragraph(rng), page=page))
    return blocks


@pytest.mark.parametrize("seed", range(40))
def test_no_text_lost_no_empty_chunk_and_budget_kept(seed):
    rng = random.Random(seed)
    blocks = _random_document(rng)
    max_tokens = rng.choice([24, 40, 80])
    overlap = rng.choice([0, 5, max_tokens // 4])
    chunks = chunk_blocks(blocks, words, max_tokens=max_tokens, overlap_tokens=overlap)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(c.text.strip() and words(c.text) <= max_tokens for c in chunks)
    pages = {b.page for b in blocks}
    assert all(c.page in pages for c in chunks)
    # Every sentence (none is over budget here) and heading is in a chunk, in the input's order.
    pieces = [s for b in blocks for _, s in split_sentences(b.text)]
    position = 0  # where the last piece was found: the next must be found at or after that chunk
    for piece in pieces:
        found = [i for i, c in enumerate(chunks) if piece in c.text and i >= position]
        assert found, f"lost {piece!r}"
        position = found[0]
