"""Quality of a (quantized) model on text: perplexity per byte, and greedy agreement with a reference.

Owns: turning a text into scored windows and the two figures every quantization scheme reports
(DESIGN.md, "Benchmark protocol" — quality).

How windows are formed. The text is tokenized once, without special tokens, and cut into
consecutive non-overlapping windows (`luodi.quant_tools.texts.token_windows`). Each window is run through
the model on its own (no context carried over), teacher-forced. If the tokenizer adds a BOS token
(as the model sees at serving time), the window holds `seq_len - 1` text tokens after a BOS and every
text token is scored; otherwise it holds `seq_len` text tokens and the first, having nothing to be
predicted from, is not scored. Either way the model reads at most `seq_len` tokens.

How bytes are counted. Per-byte figures compare models across tokenizers and languages only if the
bytes are exact, so we count the UTF-8 bytes of exactly the text the scored tokens decode to, in
context: `bytes(decode(ids[:end])) - bytes(decode(ids[:start]))`, where a prefix decode keeps only
the part that agrees with the decode of the whole text. A character whose bytes are split across
tokens (byte-level BPE does this to rare Chinese characters) thus counts toward the token that
completes it, as a streaming detokenizer emits it; with a BOS every text token is scored and the
windows together count every byte of the decoded text once. Characters (for bits per character,
`luodi.corpus.llm_score`) are counted from the same prefixes.

Must not know: how the model was quantized, files, devices beyond the model's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from os.path import commonprefix

import torch
import torch.nn.functional as F
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.loading.tokenizer import Tokenizer
from luodi.models.reference import full_logits
from luodi.progress import track_if
from luodi.quant_tools.texts import token_windows


@dataclass(frozen=True, slots=True)
class PerplexityResult:
    nll_nats: float  # total negative log-likelihood of the scored tokens
    num_tokens: int  # scored tokens
    num_bytes: int  # UTF-8 bytes of the text those tokens decode to
    bits_per_byte: float
    perplexity_per_byte: float  # exp(nll_nats / num_bytes): comparable across tokenizers and languages


@dataclass(frozen=True, slots=True)
class AgreementResult:
    num_matches: int  # positions where both models' argmax is the same token
    num_positions: int  # positions compared: those predicting a scored token
    agreement: float  # num_matches / num_positions


@dataclass(frozen=True, slots=True)
class ScoredWindow:
    input_ids: list[int]  # what the model reads; input_ids[1:] are the scored tokens
    num_bytes: int  # UTF-8 bytes the scored tokens decode to, in context
    num_chars: int  # characters the scored tokens decode to, in context (counted the same way)


def perplexity_per_byte(
    model: nn.Module, tokenizer: Tokenizer, text: str, *, seq_len: int = 512,
    max_windows: int | None = None, progress: bool = False,
) -> PerplexityResult:
    """Perplexity per UTF-8 byte of `text` under `model` (see the module docstring for windows and bytes)."""
    windows = scored_windows(tokenizer, text, seq_len=seq_len, max_windows=max_windows)
    _check_ids_fit(model, windows, "model")
    nll, num_tokens = 0.0, 0
    for window in track_if(windows, f"scoring {len(windows)} windows", progress):
        logits = full_logits(model, window.input_ids)[:-1]  # [T-1, V]: predictions of input_ids[1:]
        targets = torch.tensor(window.input_ids[1:], device=logits.device)  # [T-1]
        # Per-token losses in fp32 (as transformers' loss), summed in fp64 over thousands of tokens.
        nll += F.cross_entropy(logits, targets, reduction="none").double().sum().item()
        num_tokens += len(targets)
    num_bytes = sum(w.num_bytes for w in windows)
    if num_bytes == 0:
        raise InvalidParameterError("the scored tokens decode to no text; pass a longer text", param="text")
    return PerplexityResult(
        nll_nats=nll,
        num_tokens=num_tokens,
        num_bytes=num_bytes,
        bits_per_byte=nll / num_bytes / math.log(2),
        perplexity_per_byte=math.exp(nll / num_bytes),
    )


def greedy_agreement(
    model: nn.Module, reference: nn.Module, tokenizer: Tokenizer, text: str, *, seq_len: int = 512,
    max_windows: int | None = None, progress: bool = False,
) -> AgreementResult:
    """Teacher-forced on the same token ids: the fraction of scored positions where the argmax of
    `model` equals the argmax of `reference` (e.g. a quantized model against its float original)."""
    _check_same_vocabulary(model, reference)
    windows = scored_windows(tokenizer, text, seq_len=seq_len, max_windows=max_windows)
    _check_ids_fit(model, windows, "model")
    num_matches, num_positions = 0, 0
    for window in track_if(windows, f"comparing {len(windows)} windows", progress):
        ours = full_logits(model, window.input_ids)[:-1].argmax(dim=-1)  # [T-1]
        theirs = full_logits(reference, window.input_ids)[:-1].argmax(dim=-1).to(ours.device)  # [T-1]
        num_matches += int((ours == theirs).sum())
        num_positions += len(ours)
    return AgreementResult(num_matches, num_positions, num_matches / num_positions)


def scored_windows(
    tokenizer: Tokenizer, text: str, *, seq_len: int, max_windows: int | None = None
) -> list[ScoredWindow]:
    """The windows both figures are computed on: model inputs (BOS first if the tokenizer adds one)
    and the exact bytes of their scored tokens."""
    bos_id = tokenizer.bos_token_id if tokenizer.add_bos_token else None
    num_text_tokens = seq_len - (bos_id is not None)
    if num_text_tokens < 2:
        raise InvalidParameterError(
            f"seq_len={seq_len} is too short: a window needs at least 2 text tokens"
            + (" after the BOS token this tokenizer adds" if bos_id is not None else ""),
            param="seq_len",
        )
    ids = tokenizer.encode(text, add_special_tokens=False)
    windows = token_windows(ids, num_text_tokens, max_windows)
    if not windows:
        raise InvalidParameterError(
            f"the text is {len(ids)} token(s) long; at least 2 are needed to score anything", param="text"
        )
    prefix_text = _PrefixText(tokenizer, ids)
    scored, start = [], 0
    for window in windows:
        end = start + len(window)
        first_scored = start if bos_id is not None else start + 1
        input_ids = window if bos_id is None else [bos_id, *window]
        before, after = prefix_text(first_scored), prefix_text(end)
        scored.append(ScoredWindow(input_ids, len(after.encode("utf-8")) - len(before.encode("utf-8")),
                                   len(after) - len(before)))
        start = end
    return scored


class _PrefixText:
    """The text `ids[:k]` decode to, keeping only what agrees with the whole decode.

    Decoding a prefix rather than the tokens alone keeps context-dependent decoding right (a
    SentencePiece decoder strips the text's leading space once, not per window), and cutting at
    the agreement with the whole text drops an unfinished character's U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer, ids: list[int]) -> None:
        self._tokenizer, self._ids = tokenizer, ids
        self._full = self._decode(ids)

    def _decode(self, ids: list[int]) -> str:
        # Special tokens inside the text are text the model predicts too: keep them.
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def __call__(self, k: int) -> str:
        prefix = self._decode(self._ids[:k])
        if not self._full.startswith(prefix):
            prefix = commonprefix([prefix, self._full])
        return prefix


def _vocab_size(model: nn.Module) -> int:
    return int(model.config.vocab_size)


def _check_same_vocabulary(model: nn.Module, reference: nn.Module) -> None:
    a, b = _vocab_size(model), _vocab_size(reference)
    if a != b:
        raise InvalidParameterError(
            f"the model ({type(model).__name__}, vocab_size={a}) and the reference "
            f"({type(reference).__name__}, vocab_size={b}) do not share a vocabulary; greedy agreement "
            "compares two versions of one model (e.g. quantized against float) under one tokenizer",
            param="reference",
        )


def _check_ids_fit(model: nn.Module, windows: list[ScoredWindow], label: str) -> None:
    top = max(max(w.input_ids) for w in windows)
    if top >= _vocab_size(model):
        raise InvalidParameterError(
            f"the tokenizer produced token id {top}, but the {label} ({type(model).__name__}) has "
            f"vocab_size={_vocab_size(model)}; pass the tokenizer the model was trained with",
            param="tokenizer",
        )

