"""Incremental detokenizer and stop-string tests.

Oracles: the real SmolLM2 byte-level BPE tokenizer's `decode` of all ids at once, and the full
text cut at its earliest stop string."""

from __future__ import annotations

import random
import pytest

from luodi.engine.detokenizer import IncrementalDetokenizer, StopChecker, find_stop, held_back_length
from model_cache import pulled_model_path

TEXTS = {
    "chinese": "你好，世界！今天天气很好，我们去公园散步吧。机器学习和自然语言处理。",
    "emoji": "😀👍🏽🇨🇳👨‍👩‍👧‍👦 🎉🎉 ok 🙏",
    "mixed": "Hello 世界! héllo naïve café — 東京 ☃ ∑x² = 42 😀 end.",
    "whitespace": "  leading\n\n\ttabs   and    spaces \r\n trailing  \n",
    "code": "def f(x):\n    return x ** 2  # 平方\n",
}


class Adapter:
    """The detokenizer's view of a tokenizer; counts how many ids each decode sees."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.max_decode_len = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.max_decode_len = max(self.max_decode_len, len(ids))
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    path = pulled_model_path("smollm2-135m-instruct")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer


def _stream(detokenizer: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detokenizer.push(i) for i in ids] + [detokenizer.flush()]


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("prompt", ["", "Tell me something.", "中文提示"])
def test_pushes_concatenate_to_full_decode(tokenizer, name, prompt):
    ids = tokenizer.encode(TEXTS[name]).ids
    prompt_ids = tokenizer.encode(prompt).ids if prompt else []
    chunks = _stream(IncrementalDetokenizer(Adapter(tokenizer), prompt_ids), ids)
    assert "".join(chunks) == tokenizer.decode(ids) == TEXTS[name]
    assert not any("\ufffd" in chunk for chunk in chunks)


def test_byte_pieces_are_held_until_the_character_completes(tokenizer):
    ids = tokenizer.encode("😀").ids
    assert len(ids) > 1  # several byte-level pieces
    detokenizer = IncrementalDetokenizer(Adapter(tokenizer), [])
    assert [detokenizer.push(i) for i in ids] == [""] * (len(ids) - 1) + ["😀"]
    assert detokenizer.flush() == ""


@pytest.mark.parametrize("name", ["chinese", "emoji", "mixed"])
def test_a_cut_inside_a_character_drops_it_instead_of_emitting_u_fffd(tokenizer, name):
    """Generation stopped (max_tokens) after every prefix of the ids: the pieces never hold U+FFFD
    and join to the longest whole-character prefix of the full decode."""
    ids = tokenizer.encode(TEXTS[name]).ids
    num_cuts = 0
    for end in range(1, len(ids) + 1):
        chunks = _stream(IncrementalDetokenizer(Adapter(tokenizer), []), ids[:end])
        full = tokenizer.decode(ids[:end])
        num_cuts += full.endswith("\ufffd")
        assert not any("\ufffd" in chunk for chunk in chunks), (end, chunks)
        assert "".join(chunks) == full.rstrip("\ufffd")
    assert num_cuts > 0  # some prefixes do end inside a character


def test_special_tokens_are_skipped_or_kept(tokenizer):
    ids = tokenizer.encode("Hi there").ids
    eos = tokenizer.token_to_id("<|im_end|>")
    assert eos is not None
    sequence = [*ids[:1], eos, *ids[1:], eos]
    for skip in (True, False):
        chunks = _stream(IncrementalDetokenizer(Adapter(tokenizer), [], skip_special_tokens=skip), sequence)
        assert "".join(chunks) == tokenizer.decode(sequence, skip_special_tokens=skip)


def test_each_push_decodes_a_small_window(tokenizer):
    ids = tokenizer.encode(" ".join(TEXTS.values()) * 20).ids
    adapter = Adapter(tokenizer)
    chunks = _stream(IncrementalDetokenizer(adapter, list(range(100, 400))), ids)
    assert "".join(chunks) == tokenizer.decode(ids)
    assert len(ids) > 1000 and adapter.max_decode_len <= 16


def test_invalid_bytes_are_not_held_forever(tokenizer):
    # A lone UTF-8 continuation byte never completes a character.
    lone = tokenizer.encode("😀").ids[-1]
    adapter = Adapter(tokenizer)
    detokenizer = IncrementalDetokenizer(adapter, [])
    chunks = [detokenizer.push(lone) for _ in range(50)] + [detokenizer.flush()]
    assert "\ufffd" in "".join(chunks)
    assert adapter.max_decode_len <= 16


# --- stop strings ---------------------------------------------------------------------------


def _expected_cut(text: str, stop: tuple[str, ...]) -> str:
    indices = [text.find(s) for s in stop if s in text]
    return text[: min(indices)] if indices else text


def _run_stop_checker(chunks: list[str], stop: tuple[str, ...]) -> tuple[list[str], StopChecker]:
    checker = StopChecker(stop)
    emitted = []
    for chunk in chunks:
        emitted.append(checker.push(chunk))
        if checker.stopped:
            break
    emitted.append(checker.flush())
    return emitted, checker


def _check_stream(chunks: list[str], stop: tuple[str, ...]) -> None:
    full = "".join(chunks)
    emitted, checker = _run_stop_checker(chunks, stop)
    expected = _expected_cut(full, stop)
    assert "".join(emitted) == expected
    assert checker.stopped == (expected != full)
    # Output only grows, so equality above means no emitted chunk ever held a piece of the stop
    # string that ended the stream; and the result contains no stop string.
    assert not any(s in expected for s in stop)


STOP_CASES = [
    ("chinese", ("世界",)),
    ("chinese", ("公园散步", "。")),
    ("chinese", ("不存在",)),
    ("emoji", ("🎉",)),
    ("mixed", ("café —", "end")),
    ("mixed", ("42 😀 end.",)),
    ("whitespace", ("\n\n",)),
    ("whitespace", ("   and",)),
    ("code", ("return",)),
    ("code", ("\n",)),
]


@pytest.mark.parametrize(("name", "stop"), STOP_CASES)
def test_stop_checker_on_detokenized_stream(tokenizer, name, stop):
    ids = tokenizer.encode(TEXTS[name]).ids
    _check_stream(_stream(IncrementalDetokenizer(Adapter(tokenizer), []), ids), stop)


@pytest.mark.parametrize(("name", "stop"), STOP_CASES)
def test_stop_checker_on_random_chunks(name, stop):
    rng = random.Random(0)
    text = TEXTS[name]
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        _check_stream(chunks, stop)
    _check_stream(list(text), stop)  # one character at a time


def test_stop_checker_holds_back_possible_starts():
    checker = StopChecker(("</answer>", "STOP"))
    assert checker.push("The answer is 4</ans") == "The answer is 4"
    assert checker.push("wer is near") == "</answer is near"  # not a stop after all
    assert checker.push(" ST") == " "
    assert checker.push("OP and more") == ""
    assert checker.stopped and checker.matched == "STOP"
    assert checker.push("ignored") == "" and checker.flush() == ""


def test_stop_checker_flush_releases_an_unfinished_prefix():
    checker = StopChecker(("###",))
    assert checker.push("done ##") == "done "
    assert checker.flush() == "##"
    assert not checker.stopped


def test_stop_checker_without_stops_passes_through():
    checker = StopChecker(())
    assert checker.push("abc") == "abc" and checker.flush() == ""


def test_find_stop_prefers_earliest_then_longest():
    assert find_stop("xxabcd", ("bcd", "ab", "abc")).stop == "abc"
    assert find_stop("xxabcd", ("bcd", "ab", "abc")).index == 2
    assert find_stop("nothing", ("zz",)) is None
    assert held_back_length("hello ab", ("abc", "b")) == 2
    assert held_back_length("hello", ("abc",)) == 0
