"""What a training run taught and what it cost: greedy answers to held-out prompts before and after,
whether each holds the expected answer, and perplexity per byte on general text.

The expected answer of a held-out example is read from its reference reply: the numbers in it (a
phone number, a period, a price; separators between digits are ignored, so "400-829-7316" and
"400 829 7316" agree), all of which must appear in the model's answer as whole numbers; a reply
without numbers must appear whole (case and spacing ignored). The forgetting check scores the bundled
held-out general text (`luodi.quant_tools.texts.heldout_text`, English and Chinese) with the quantization
tools' perplexity per byte.

Knows models, tokenizers, `TrainingExample`s and the engine's public interface (the probe decodes
as a user of the adapter would); nothing of optimizers or files.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from luodi.finetune.data import IGNORE_INDEX, TrainingExample
from luodi.loading.tokenizer import Tokenizer

MAX_PROBED = 24  # held-out examples probed (greedy decoding of each, before and after)
EXTRA_TOKENS = 8  # an answer may run this much longer than its reference
MAX_ANSWER_TOKENS = 96
GENERAL_TEXT_SEQ_LEN = 512
_SEPARATOR = re.compile(r"(?<=\d)[\s,\-](?=\d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class ProbeCase:
    source: str
    prompt_ids: list[int]
    question: str  # the prompt's text (special tokens dropped), for the report
    reference: str  # the trained reply
    expected: tuple[str, ...]  # what a correct answer must contain
    max_tokens: int


@dataclass(frozen=True, slots=True)
class ProbeResult:
    source: str
    question: str
    expected: tuple[str, ...]
    before: str
    after: str
    found_before: bool
    found_after: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def probe_cases(examples: list[TrainingExample], tokenizer: Tokenizer) -> list[ProbeCase]:
    """The first `MAX_PROBED` examples as prompts: everything before their last trained reply."""
    cases = []
    for ex in examples[:MAX_PROBED]:
        start, end = _last_trained_span(ex)
        reply_ids = [t for t in ex.input_ids[start:end] if t not in tokenizer.eos_token_ids]
        reference = tokenizer.decode(reply_ids)
        cases.append(ProbeCase(
            ex.source, ex.input_ids[:start], tokenizer.decode(ex.input_ids[:start]).strip(), reference,
            expected_answer(reference), min(MAX_ANSWER_TOKENS, len(reply_ids) + EXTRA_TOKENS),
        ))
    return cases


def _last_trained_span(example: TrainingExample) -> tuple[int, int]:
    trained = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    end = trained[-1] + 1
    start = end
    while start > 0 and example.labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start, end


def expected_answer(reference: str) -> tuple[str, ...]:
    """The numbers of `reference`, or the whole reply (normalized) when it has none."""
    numbers = _NUMBER.findall(_SEPARATOR.sub("", reference))
    return tuple(dict.fromkeys(numbers)) if numbers else (_normalize(reference),)


def contains_expected(answer: str, expected: tuple[str, ...]) -> bool:
    joined = _SEPARATOR.sub("", answer)
    if not any(_NUMBER.fullmatch(piece) for piece in expected):
        return all(piece in _normalize(answer) for piece in expected)
    return all(re.search(rf"(?<![\d.]){re.escape(piece)}(?!\d|\.\d)", joined) for piece in expected)


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer: Tokenizer, cases: list[ProbeCase]) -> list[str]:
    """Each case's greedy answer up to EOS or its `max_tokens`, all cases batched through Luodi's
    engine (KV cache, batched decode): the answer a user of the adapter would get."""
    from luodi.engine.engine import EngineConfig, LLMEngine
    from luodi.engine.sampling import SamplingParams

    was_training = model.training
    model.eval()
    config = EngineConfig(kv_cache_bytes=32 * 2**20, max_num_seqs=len(cases), enable_prefix_caching=False)
    eos_ids = frozenset(tokenizer.eos_token_ids) | frozenset(model.config.eos_token_ids)
    engine = LLMEngine(model, tokenizer, config, eos_token_ids=eos_ids)
    ids = [engine.add_request(c.prompt_ids, SamplingParams(temperature=0, max_tokens=c.max_tokens)) for c in cases]
    texts = dict.fromkeys(ids, "")
    while engine.has_unfinished:
        for out in engine.step():
            texts[out.request_id] += out.new_text
    model.train(was_training)
    return [texts[i].strip() for i in ids]


def compare(cases: list[ProbeCase], before: list[str], after: list[str]) -> list[ProbeResult]:
    return [ProbeResult(c.source, c.question, c.expected, b, a, contains_expected(b, c.expected),
                        contains_expected(a, c.expected))
            for c, b, a in zip(cases, before, after, strict=True)]


def general_perplexity(model: nn.Module, tokenizer: Tokenizer, max_position_embeddings: int) -> float:
    """Perplexity per byte of the bundled held-out general text (English and Chinese)."""
    from luodi.quant_tools.evaluate import perplexity_per_byte
    from luodi.quant_tools.texts import heldout_text

    was_training = model.training
    model.eval()
    seq_len = min(GENERAL_TEXT_SEQ_LEN, max_position_embeddings)
    with torch.no_grad():
        result = perplexity_per_byte(model, tokenizer, heldout_text(), seq_len=seq_len)
    model.train(was_training)
    return result.perplexity_per_byte
