"""Bits per character of documents under a Luodi LLM: the teacher of the quality classifier and the
measure of the LLM fine filter.

Owns scoring many texts teacher-forced, in batched prefill passes. A document is scored on its
first `max_tokens` tokens only (a longer one gets the bits per character of its beginning, and is
marked truncated): the windows, the BOS token and the counting of characters are the quality
evaluator's (`luodi.quant_tools.evaluate.scored_windows` with one window), so a score here and a
perplexity there agree on what was scored. Documents are sorted by length and packed into forward
passes of at most `batch_tokens` tokens (`luodi.models.reference.batch_logits`, the forward the
evaluator uses, over several sequences), so little is spent on padding; a score does not depend on
which documents share its batch beyond float rounding.
Must not know: files, recipes, steps, languages.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.loading.tokenizer import Tokenizer
from luodi.models.reference import batch_logits
from luodi.progress import progress as show_progress
from luodi.quant_tools.evaluate import ScoredWindow, scored_windows

DEFAULT_MAX_TOKENS = 512
DEFAULT_BATCH_TOKENS = 2048
CHARS_PER_TOKEN_BOUND = 16  # text beyond max_tokens * this cannot fall in the first window: not tokenized


@dataclass(frozen=True, slots=True)
class BpcScore:
    bits_per_char: float | None  # None: the text has fewer than 2 tokens, nothing to score
    num_tokens: int  # tokens scored
    num_chars: int  # characters those tokens decode to
    is_truncated: bool  # only the first max_tokens tokens were scored


class BpcScorer:
    """Scores texts by bits per character under `model` (a loaded Luodi causal LM)."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS) -> None:
        if max_tokens < 3:
            raise InvalidParameterError(f"max_tokens={max_tokens} is too small; use at least 3 (e.g. 512)",
                                        param="max_tokens")
        if batch_tokens < max_tokens:
            raise InvalidParameterError(f"batch_tokens={batch_tokens} is below max_tokens={max_tokens}; a "
                                        "batch must hold one whole document", param="batch_tokens")
        self.model, self.tokenizer = model, tokenizer
        self.max_tokens, self.batch_tokens = max_tokens, batch_tokens

    @classmethod
    def load(cls, model: str, *, dtype: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
             batch_tokens: int = DEFAULT_BATCH_TOKENS, progress: bool = False) -> BpcScorer:
        """The model as `luodi.llm.LLM` loads it (a catalog name or a path), without an engine: scoring
        needs no KV pool."""
        loaded = _load(model, dtype, progress)
        return cls(loaded.model, loaded.tokenizer, max_tokens=max_tokens, batch_tokens=batch_tokens)

    def score(self, texts: list[str], *, progress: bool = False) -> list[BpcScore]:
        """One score per text, in order."""
        windows = [self._window(text) for text in texts]
        nlls: dict[int, float] = {}
        order = sorted((i for i, w in enumerate(windows) if w[0] is not None),
                       key=lambda i: len(windows[i][0].input_ids))  # type: ignore[union-attr]
        with show_progress("LLM scoring", sum(w.num_chars for w, _ in windows if w is not None),
                           enabled=progress, unit="chars") as advance:
            for batch in self._batches(order, windows):
                seqs = [windows[i][0].input_ids for i in batch]  # type: ignore[union-attr]
                for i, nll in zip(batch, sequence_nlls(self.model, seqs)):
                    nlls[i] = nll
                advance(sum(windows[i][0].num_chars for i in batch))  # type: ignore[union-attr]
        return [_score(w, truncated, nlls.get(i)) for i, (w, truncated) in enumerate(windows)]

    def _window(self, text: str) -> tuple[ScoredWindow | None, bool]:
        cut = self.max_tokens * CHARS_PER_TOKEN_BOUND
        try:
            found = scored_windows(self.tokenizer, text[:cut], seq_len=self.max_tokens, max_windows=2)
        except InvalidParameterError:  # fewer than 2 tokens
            return None, False
        return found[0], len(found) > 1 or len(text) > cut

    def _batches(self, order: list[int], windows: list[tuple[ScoredWindow | None, bool]]) -> list[list[int]]:
        """Indices packed so that batch size x longest sequence stays within batch_tokens (padding counts)."""
        batches: list[list[int]] = []
        for i in order:
            length = len(windows[i][0].input_ids)  # type: ignore[union-attr]
            if batches and (len(batches[-1]) + 1) * length <= self.batch_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches


@functools.lru_cache(maxsize=1)  # training the classifier and the fine filter share one load
def _load(model: str, dtype: str | None, progress: bool) -> Any:
    from luodi.models.loader import load_model

    return load_model(model, device="cpu", dtype=dtype, progress=progress)


def sequence_nlls(model: nn.Module, sequences: list[list[int]]) -> list[float]:
    """Teacher-forced negative log-likelihood (nats) of tokens 1.. of each sequence, in one pass."""
    logits = batch_logits(model, sequences)  # [sum T, V]
    nlls, start = [], 0
    for seq in sequences:
        rows = logits[start:start + len(seq) - 1]  # [T-1, V]: predictions of seq[1:]
        targets = torch.tensor(seq[1:], device=rows.device)
        # fp32 per-token losses (as the evaluator and transformers), summed in fp64
        nlls.append(F.cross_entropy(rows, targets, reduction="none").double().sum().item())
        start += len(seq)
    return nlls


def _score(window: ScoredWindow | None, truncated: bool, nll: float | None) -> BpcScore:
    if window is None or nll is None or window.num_chars == 0:
        return BpcScore(None, 0, 0, False)
    return BpcScore(nll / window.num_chars / math.log(2), len(window.input_ids) - 1, window.num_chars, truncated)
