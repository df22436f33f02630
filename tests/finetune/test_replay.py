"""General-text replay: whole windows of the bundled calibration text, every token trained, each
window once per cycle; and a training step with replay follows the gradient of task loss + weight ×
replay loss (checked against that sum computed with plain autograd on the tiny model)."""

from __future__ import annotations

import itertools
import random

import torch

from luodi.finetune.data import IGNORE_INDEX, TrainingExample
from luodi.finetune.forward import batch_loss, pack
from luodi.finetune.lora import LoraOptions, attach_lora, load_for_training, trainable_parameters
from luodi.finetune.replay import REPLAY_SEQ_LEN, Replay, general_replay
from luodi.finetune.train import TrainOptions, train_epoch
from luodi.quant_tools.texts import calibration_text


class _CharTokenizer:
    """One id a character: enough to check how windows are cut."""

    def encode(self, text: str, add_special_tokens: bool = True, *, split_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


def test_windows_cover_the_calibration_text_in_order_with_every_token_trained():
    replay = general_replay(_CharTokenizer(), 0.5)  # type: ignore[arg-type]
    text = calibration_text()
    assert len(replay.windows) == len(text) // REPLAY_SEQ_LEN
    for i, window in enumerate(replay.windows):
        chars = text[i * REPLAY_SEQ_LEN:(i + 1) * REPLAY_SEQ_LEN]
        assert window.input_ids == window.labels == [ord(c) for c in chars]


def test_each_cycle_draws_every_window_once_in_a_seeded_order():
    replay = general_replay(_CharTokenizer(), 1.0, per_step=2)  # type: ignore[arg-type]
    n = len(replay.windows)
    cycle = list(itertools.islice(replay.stream(seed=3).batches, n // 2))
    drawn = [tuple(w.input_ids) for batch in cycle for w in batch]
    assert len(set(drawn)) == len(drawn) == 2 * (n // 2)  # no window twice within a cycle
    again = list(itertools.islice(replay.stream(seed=3).batches, n // 2))
    assert [[w.input_ids for w in b] for b in again] == [[w.input_ids for w in b] for b in cycle]


def test_a_step_with_replay_follows_the_summed_gradient(tiny_model_dir):
    task = [TrainingExample([3, 4, 1], [IGNORE_INDEX, 4, 1], "train")]
    window = TrainingExample([5, 6, 7, 8, 9], [5, 6, 7, 8, 9], "calibration.txt")
    replay = Replay((window,), weight=0.5)

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(0)
        model = attach_lora(load_for_training(str(tiny_model_dir), device="cpu", dtype="float32").model,
                            LoraOptions(rank=4, alpha=8))
        for param in trainable_parameters(model):  # LoRA's B starts at zero: give every factor a gradient
            torch.nn.init.normal_(param, std=0.02)
        return model

    lr = 1e-2
    model = fresh_model()
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=lr)
    options = TrainOptions(epochs=1, lr=lr, batch_size=1)
    list(train_epoch(model, optimizer, task, options, random.Random(0), replay=replay.stream(0)))

    oracle = fresh_model()
    loss = batch_loss(oracle, pack(task)) + 0.5 * batch_loss(oracle, pack([window]))
    loss.backward()
    with torch.no_grad():
        expected = [p - lr * p.grad for p in trainable_parameters(oracle)]
    for got, want in zip(trainable_parameters(model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
