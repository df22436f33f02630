"""Perplexity per byte, greedy agreement, token windows and the bundled texts.

Oracles: transformers' own loss (`model(input_ids, labels=...)`) of a tiny random llama on the same
windows; bytes counted from the tokens' raw bytes, independently of any decode; argmax matches
counted by hand.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from luodi.errors import InvalidParameterError
from luodi.loading.tokenizer import Tokenizer
from luodi.models.config import ModelConfig
from luodi.models.llama import LlamaForCausalLM
from luodi.models.loader import load_config_and_weights
from luodi.models.reference import full_logits
from luodi.models.registry import build_model
from luodi.quant_tools.evaluate import greedy_agreement, perplexity_per_byte, scored_windows
from luodi.quant_tools.texts import calibration_text, heldout_text, token_windows

transformers = pytest.importorskip("transformers")

VOCAB_SIZE = 512
BOS = "<s>"
ENGLISH = "The keeper climbed the steps at dusk, wrote one line in the ledger, and went down again. " * 3
CHINESE = "巷子口有一家很小的修车铺，主人已经在这里修了二十多年自行车，墙上的工具按大小挂得整整齐齐。" * 3


# -- fixtures --------------------------------------------------------------------------------------


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte table, inverted (openai/gpt-2 encoder.py)."""
    printable = [
        *range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)
    ]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@pytest.fixture(scope="module")
def backend() -> Backend:
    """A byte-level BPE trained on the calibration text: it splits rare Chinese characters into bytes."""
    bpe = Backend(BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=400, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([calibration_text()], trainer=trainer)
    return bpe


def _tokenizer(backend: Backend, *, add_bos: bool) -> Tokenizer:
    bpe = copy.deepcopy(backend)
    if add_bos:
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", special_tokens=[(BOS, bpe.token_to_id(BOS))]
        )
    tokenizer = Tokenizer(bpe, bos_token=BOS)
    assert tokenizer.add_bos_token == add_bos
    return tokenizer


@pytest.fixture(scope="module", params=[False, True], ids=["no-bos", "bos"])
def tokenizer(request, backend) -> Tokenizer:
    return _tokenizer(backend, add_bos=request.param)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers model, Luodi fp32 model loaded from its saved safetensors)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
    )
    hf_model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    path = tmp_path_factory.mktemp("tiny-llama")
    hf_model.save_pretrained(path, safe_serialization=True)
    model_config, weights, _ = load_config_and_weights(path)
    ours = build_model(model_config, weights, dtype=torch.float32, device=torch.device("cpu")).eval()
    return hf_model, ours


# -- oracles ---------------------------------------------------------------------------------------


def _windows(
    tokenizer: Tokenizer, text: str, seq_len: int, max_windows: int | None
) -> list[tuple[int, int]]:
    """(start, end) of each window in the text's token ids, cut by hand."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    width = seq_len - tokenizer.add_bos_token
    spans = [(s, min(s + width, len(ids))) for s in range(0, len(ids), width)]
    spans = [(s, e) for s, e in spans if e - s >= 2]
    return spans[:max_windows] if max_windows else spans


def _expected_bytes(tokenizer: Tokenizer, text: str, spans: list[tuple[int, int]]) -> int:
    """Bytes of the scored tokens from their raw bytes: a character counts toward the token that
    holds its last byte, i.e. ids[:k] cover the bytes up to the last character boundary in them."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    byte_of = _gpt2_byte_decoder()
    raw = [0]
    for token_id in ids:
        raw.append(raw[-1] + len(tokenizer.id_to_token(token_id)))  # one character per byte
    assert bytes(byte_of[c] for i in ids for c in tokenizer.id_to_token(i)) == text.encode()
    data = text.encode()

    def covered(k: int) -> int:
        n = raw[k]
        while n < len(data) and data[n] & 0xC0 == 0x80:  # inside a character: back to its start
            n -= 1
        return n

    first = 0 if tokenizer.add_bos_token else 1
    return sum(covered(e) - covered(s + first) for s, e in spans)


def _hf_total_loss(
    hf_model, tokenizer: Tokenizer, text: str, spans: list[tuple[int, int]]
) -> tuple[float, int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    total, count = 0.0, 0
    for s, e in spans:
        window = ids[s:e]
        inputs = [tokenizer.bos_token_id, *window] if tokenizer.add_bos_token else window
        labels = [-100, *window] if tokenizer.add_bos_token else window  # transformers shifts labels itself
        with torch.no_grad():
            loss = hf_model(torch.tensor([inputs]), labels=torch.tensor([labels])).loss
        total += loss.item() * (len(inputs) - 1)
        count += len(inputs) - 1
    return total, count


# -- perplexity ------------------------------------------------------------------------------------


def test_perplexity_per_byte_equals_transformers_loss(models, tokenizer):
    hf_model, ours = models
    text = heldout_text()[:2500]  # English, then the start of the Chinese section
    assert re.search(r"[\u4e00-\u9fff]", text) and re.search("[a-z]", text)
    got = perplexity_per_byte(ours, tokenizer, text, seq_len=64, max_windows=12)
    spans = _windows(tokenizer, text, 64, 12)
    nll, count = _hf_total_loss(hf_model, tokenizer, text, spans)
    num_bytes = _expected_bytes(tokenizer, text, spans)
    assert (got.num_tokens, got.num_bytes) == (count, num_bytes)
    assert got.nll_nats == pytest.approx(nll, rel=1e-4)
    assert got.perplexity_per_byte == pytest.approx(math.exp(nll / num_bytes), rel=1e-4)
    assert got.bits_per_byte == pytest.approx(nll / num_bytes / math.log(2), rel=1e-4)


@pytest.mark.parametrize("text", [ENGLISH, CHINESE], ids=["english", "chinese"])
@pytest.mark.parametrize("seq_len", [7, 16, 1000])
def test_bytes_counted_are_the_scored_span(tokenizer, text, seq_len):
    windows = scored_windows(tokenizer, text, seq_len=seq_len)
    spans = _windows(tokenizer, text, seq_len, None)
    assert sum(w.num_bytes for w in windows) == _expected_bytes(tokenizer, text, spans)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if tokenizer.add_bos_token and seq_len > len(ids):  # one window scores every token of the text
        assert [w.num_bytes for w in windows] == [len(text.encode())]


def test_chinese_windows_do_split_characters(backend):
    """The byte test above is only meaningful if some window starts inside a character."""
    tokenizer = _tokenizer(backend, add_bos=False)
    ids = tokenizer.encode(CHINESE, add_special_tokens=False)
    starts = [tokenizer.decode(ids[:s]) for s in range(7, len(ids), 7)]
    assert any(prefix.endswith("\ufffd") for prefix in starts)
    assert len(ids) > len(CHINESE)  # byte-level: many characters take more than one token


def test_english_bytes_without_bos_exclude_each_first_token(backend):
    tokenizer = _tokenizer(backend, add_bos=False)
    ids = tokenizer.encode(ENGLISH, add_special_tokens=False)
    spans = _windows(tokenizer, ENGLISH, 10, None)
    got = sum(w.num_bytes for w in scored_windows(tokenizer, ENGLISH, seq_len=10))
    covered = len(tokenizer.decode(ids[:spans[-1][1]]).encode())
    assert got == covered - sum(len(tokenizer.decode(ids[s:s + 1]).encode()) for s, _ in spans)


def test_too_short_inputs_raise(models, backend):
    _, ours = models
    with pytest.raises(InvalidParameterError, match="seq_len=2"):
        perplexity_per_byte(ours, _tokenizer(backend, add_bos=True), ENGLISH, seq_len=2)
    with pytest.raises(InvalidParameterError, match="1 token"):
        perplexity_per_byte(ours, _tokenizer(backend, add_bos=False), "a", seq_len=8)


# -- greedy agreement ------------------------------------------------------------------------------


def _hand_agreement(model, reference, tokenizer, text, seq_len, max_windows) -> tuple[int, int]:
    matches = positions = 0
    for window in scored_windows(tokenizer, text, seq_len=seq_len, max_windows=max_windows):
        a = full_logits(model, window.input_ids).argmax(-1).tolist()[:-1]
        b = full_logits(reference, window.input_ids).argmax(-1).tolist()[:-1]
        matches += sum(x == y for x, y in zip(a, b, strict=True))
        positions += len(a)
    return matches, positions


def test_greedy_agreement_with_itself_is_one(models, tokenizer):
    _, ours = models
    result = greedy_agreement(ours, ours, tokenizer, heldout_text(), seq_len=48, max_windows=4)
    assert result.agreement == 1.0
    assert result.num_matches == result.num_positions == sum(
        len(w.input_ids) - 1 for w in scored_windows(tokenizer, heldout_text(), seq_len=48, max_windows=4)
    )


def test_greedy_agreement_with_perturbed_copy_counts_matches(models, tokenizer):
    _, ours = models
    perturbed = copy.deepcopy(ours)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in perturbed.model.layers:
            weight = layer.mlp.down_proj.weight
            weight.add_(torch.randn(weight.shape, generator=generator) * weight.std())
    text = calibration_text()
    result = greedy_agreement(perturbed, ours, tokenizer, text, seq_len=48, max_windows=4)
    matches, positions = _hand_agreement(perturbed, ours, tokenizer, text, 48, 4)
    assert (result.num_matches, result.num_positions) == (matches, positions)
    assert 0.0 < result.agreement < 1.0
    assert result.agreement == matches / positions


def test_greedy_agreement_needs_one_vocabulary(models, tokenizer):
    _, ours = models
    config = ModelConfig(model_type="llama", vocab_size=600, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    other = LlamaForCausalLM(config).eval()
    with pytest.raises(InvalidParameterError, match=r"vocab_size=512.*vocab_size=600") as info:
        greedy_agreement(ours, other, tokenizer, ENGLISH, seq_len=16)
    assert info.value.param == "reference"


# -- token windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, seq_len, max_windows, expected",
    [
        ([], 4, None, []),
        ([7], 4, None, []),
        ([1, 2], 4, None, [[1, 2]]),
        ([1, 2, 3, 4], 2, None, [[1, 2], [3, 4]]),
        ([1, 2, 3, 4, 5], 2, None, [[1, 2], [3, 4]]),  # a 1-token tail has nothing to score
        ([1, 2, 3, 4, 5, 6, 7], 3, None, [[1, 2, 3], [4, 5, 6]]),
        ([1, 2, 3, 4, 5, 6, 7, 8], 3, None, [[1, 2, 3], [4, 5, 6], [7, 8]]),
        ([1, 2, 3, 4, 5, 6, 7, 8], 3, 2, [[1, 2, 3], [4, 5, 6]]),
        ([1, 2, 3], 3, 5, [[1, 2, 3]]),
    ],
)
def test_token_windows(ids, seq_len, max_windows, expected):
    assert token_windows(ids, seq_len, max_windows) == expected


@pytest.mark.parametrize("seq_len, max_windows, bad", [(1, None, "seq_len=1"), (0, None, "seq_len=0"),
                                                       (4, 0, "max_windows=0")])
def test_token_windows_rejects_bad_sizes(seq_len, max_windows, bad):
    with pytest.raises(InvalidParameterError, match=bad):
        token_windows([1, 2, 3], seq_len, max_windows)


# -- bundled texts ---------------------------------------------------------------------------------


def _long_lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if len(line.strip()) >= 40}


@pytest.mark.parametrize("load, size", [(calibration_text, 24_000), (heldout_text, 16_000)])
def test_bundled_text_mixes_chinese_and_english(load, size):
    text = load()
    num_bytes = len(text.encode())
    chinese = sum(len(c.encode()) for c in text if "\u3000" <= c <= "\u9fff" or "\uff00" <= c <= "\uffef")
    assert 0.8 * size < num_bytes < 1.2 * size
    assert 0.35 < chinese / num_bytes < 0.65  # about half Chinese by bytes, the rest mostly English
    assert len(re.findall(r"\b[A-Za-z]+\b", text)) > num_bytes / 20


def test_bundled_texts_share_no_line():
    assert _long_lines(calibration_text()).isdisjoint(_long_lines(heldout_text()))
