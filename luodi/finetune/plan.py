"""The training plan: rank, learning rate, epochs, warm-up and decay chosen from the dataset's size.

Owns the defaults `luodi finetune` runs with when the user names none, the reason printed beside
each choice, and the learning-rate schedule. Knows counts, not models, data or optimizers.

Why these numbers: the old defaults (rank 8, lr 2e-4, 3 epochs) ran ~30 optimizer steps on a set
of a few dozen chats and taught SmolLM2-135M-Instruct 1 held-out question of 3, while rank 16 at
lr 1e-3 taught every held-out question of the earlier two-fact test. benchmarks/finetune_facts.py
measures these defaults on twelve facts (answered fraction per seed, wall time). What a small set needs is enough *steps* at a
high enough rate, not more passes by name: the plan asks for at least `MIN_STEPS` optimizer steps
(as many epochs as that takes, at most `MAX_EPOCHS`) at lr 1e-3 with rank 16, a linear warm-up
and a cosine decay to a tenth, and early stopping on held-out loss keeps the best epoch, so the
generous step count costs nothing when the set is learned sooner. Larger sets get the usual
3 epochs and a lower rate (their steps are many already, and a high rate on thousands of steps
moves the model further from what it knew).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from luodi.errors import InvalidParameterError

DEFAULT_RANK = 16
SMALL_SET_EXAMPLES = 1000  # up to this many training examples, the small-set rate
SMALL_SET_LR = 1e-3
LARGE_SET_LR = 3e-4
MIN_STEPS = 150
MIN_EPOCHS = 3
MAX_EPOCHS = 30
WARMUP_FRACTION = 0.06
MAX_WARMUP_STEPS = 50
FINAL_LR_FRACTION = 0.1  # cosine decay ends at lr × this
# The general-text loss's weight beside the task loss (see `replay`). Measured on the twelve-fact set
# (seed 0, 154 steps): weight 0 answered 16 of 24 held-out questions with general perplexity +36 %;
# 0.3 answered 15 with -7 %; 1.0 answered 6-9 with -8 % (the facts are learned more slowly).
DEFAULT_REPLAY_WEIGHT = 0.3
# Epochs without a better held-out result (answers right, then loss) before training stops. On the
# twelve-fact set (seed 0, replay 0.3), judged by loss alone it stopped at epoch 7 of 14 and kept
# epoch 4: 11 of 24 held-out questions answered. Judged by the held-out answers first it ran all 14
# and kept epoch 11: 15 of 24, general perplexity -7.5 % (`benchmarks/finetune_facts.py --seeds 0`).
DEFAULT_PATIENCE = 3
SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True, slots=True)
class Choice:
    value: float | int | str
    reason: str  # "given", or why the default is what it is

    @property
    def is_given(self) -> bool:
        return self.reason == "given"


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    rank: Choice
    lr: Choice
    epochs: Choice
    warmup_steps: Choice
    schedule: Choice
    patience: Choice
    replay: Choice
    steps_per_epoch: int

    @property
    def num_steps(self) -> int:
        return int(self.epochs.value) * self.steps_per_epoch

    def describe(self) -> list[tuple[str, str, str]]:
        """(setting, value, why) rows for the terminal and report.json."""
        rows = [("rank", self.rank), ("learning rate", self.lr), ("epochs", self.epochs),
                ("warm-up steps", self.warmup_steps), ("schedule", self.schedule),
                ("early stopping", self.patience), ("general-text replay", self.replay)]
        return [(name, _format(choice.value, name), choice.reason) for name, choice in rows]

    def to_dict(self) -> dict[str, object]:
        return {name: {"value": value, "why": why} for name, value, why in self.describe()} | {
            "steps_per_epoch": self.steps_per_epoch, "max_steps": self.num_steps}


def plan_training(
    num_examples: int, batch_size: int, *, rank: int | None = None, lr: float | None = None,
    epochs: int | None = None, warmup_steps: int | None = None, schedule: str | None = None,
    patience: int | None = None, replay: float | None = None, has_heldout: bool = True,
) -> TrainingPlan:
    """Every setting the user gave is kept ("given"); the rest follow from the dataset's size."""
    steps_per_epoch = math.ceil(num_examples / batch_size)
    small = num_examples <= SMALL_SET_EXAMPLES
    size = f"{num_examples} training examples"
    rank_c = _given(rank) or Choice(DEFAULT_RANK, "default: enough capacity for hundreds of facts")
    lr_c = _given(lr) or (Choice(SMALL_SET_LR, f"{size} ≤ {SMALL_SET_EXAMPLES}: a small set needs a high rate")
                          if small else Choice(LARGE_SET_LR, f"{size} > {SMALL_SET_EXAMPLES}"))
    epochs_c = _given(epochs) or _auto_epochs(steps_per_epoch, num_examples, batch_size)
    total = int(epochs_c.value) * steps_per_epoch
    warmup_c = _given(warmup_steps) or Choice(
        min(MAX_WARMUP_STEPS, math.ceil(WARMUP_FRACTION * total)),
        f"{WARMUP_FRACTION:.0%} of {total} steps, at most {MAX_WARMUP_STEPS}")
    schedule_c = _given(schedule) or Choice("cosine", f"decays to {FINAL_LR_FRACTION:g} × lr by the last step")
    if patience is not None:
        patience_c = Choice(patience, "given")
    elif has_heldout:
        patience_c = Choice(DEFAULT_PATIENCE, "stop after this many epochs without a better held-out result "
                                              "(answers right, then loss); the best epoch's adapter is kept")
    else:
        patience_c = Choice(0, "off: no held-out examples to judge by")
    replay_c = _given(replay) or Choice(DEFAULT_REPLAY_WEIGHT, "each step also trains on a window of general "
                                        "text, so the model keeps what it knew")
    plan = TrainingPlan(rank_c, lr_c, epochs_c, warmup_c, schedule_c, patience_c, replay_c, steps_per_epoch)
    _validate(plan)
    return plan


def _given(value: float | int | str | None) -> Choice | None:
    return None if value is None else Choice(value, "given")


def _auto_epochs(steps_per_epoch: int, num_examples: int, batch_size: int) -> Choice:
    wanted = math.ceil(MIN_STEPS / steps_per_epoch)
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, wanted))
    if epochs == MIN_EPOCHS and wanted < MIN_EPOCHS:
        return Choice(epochs, f"{steps_per_epoch} steps per epoch: {MIN_EPOCHS} epochs are ≥ {MIN_STEPS} steps")
    return Choice(epochs, f"≥ {MIN_STEPS} steps at {steps_per_epoch} per epoch ({num_examples} examples, "
                          f"batch {batch_size}), at most {MAX_EPOCHS} epochs")


def _validate(plan: TrainingPlan) -> None:
    if plan.schedule.value not in SCHEDULES:
        raise InvalidParameterError(
            f"--schedule {plan.schedule.value!r} is not one of {', '.join(SCHEDULES)}", "schedule")
    replay = plan.replay.value
    if isinstance(replay, bool) or not isinstance(replay, int | float) or not 0 <= replay <= 10:
        raise InvalidParameterError(f"--replay {replay!r} must be a weight in [0, 10] (0: no replay)", "replay")
    for name, choice in (("warmup-steps", plan.warmup_steps), ("patience", plan.patience)):
        value = choice.value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidParameterError(f"--{name} {value!r} must be an integer ≥ 0 (0: none)", name)


def _format(value: float | int | str, name: str) -> str:
    if name == "learning rate":
        return f"{value:g}"
    if name == "general-text replay":
        return f"weight {value:g}" if value else "off"
    if name == "early stopping":
        return f"patience {value}" if value else "off"
    return str(value)


def lr_factor(step: int, num_steps: int, warmup_steps: int, schedule: str) -> float:
    """The multiplier of the peak lr at optimizer step `step` (0-based): linear warm-up from
    1 / (warmup + 1), then cosine or linear decay to `FINAL_LR_FRACTION` at the last step."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, num_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * shape
