"""General-text replay: windows of the bundled calibration text trained beside the user's examples.

A LoRA adapter that learns a few dozen facts at a high rate also moves what the model does on
everything else (measured on SmolLM2-135M: twelve facts, rank 16, lr 1e-3, ~150 steps raised the
perplexity per byte of the bundled held-out text by 28-36 %). Each optimizer step therefore also
takes the language-model loss of one window of general text (`luodi.quant_tools.texts.calibration_text`,
English and Chinese, sharing no sentence with the held-out text the forgetting check reads),
weighted against the task loss. The windows cycle in a seeded shuffled order.

Knows tokenizers, the bundled texts and `TrainingExample`; nothing of models or optimizers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from luodi.finetune.data import TrainingExample
from luodi.loading.tokenizer import Tokenizer
from luodi.quant_tools.texts import calibration_text, token_windows

REPLAY_SEQ_LEN = 128  # tokens a window: a step's replay costs about one more example's forward and backward


@dataclass(frozen=True, slots=True)
class Replay:
    windows: tuple[TrainingExample, ...]
    weight: float  # the replay loss's weight beside the task loss (which has weight 1)
    per_step: int = 1  # windows a step

    def stream(self, seed: int) -> ReplayStream:
        return ReplayStream(self.weight, _cycle(self.windows, self.per_step, seed))


@dataclass(frozen=True, slots=True)
class ReplayStream:
    """What a training run draws from: the weight, and one batch of windows a step."""

    weight: float
    batches: Iterator[list[TrainingExample]]


def _cycle(windows: tuple[TrainingExample, ...], per_step: int, seed: int) -> Iterator[list[TrainingExample]]:
    """Endless batches of `per_step` windows: every window once per shuffled cycle."""
    rng = random.Random(seed)
    order = list(windows)
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - per_step + 1, per_step):
            yield order[start:start + per_step]


def general_replay(tokenizer: Tokenizer, weight: float, *, per_step: int = 1,
                   seq_len: int = REPLAY_SEQ_LEN) -> Replay:
    """Replay over windows of the bundled calibration text, every token of them trained."""
    ids = tokenizer.encode(calibration_text(), add_special_tokens=False, split_special_tokens=True)
    windows = tuple(TrainingExample(list(w), list(w), "calibration.txt")
                    for w in token_windows(ids, seq_len) if len(w) == seq_len)
    return Replay(windows, weight, per_step)
