"""The planned defaults, the carved held-out split, the probe's answer check and early stopping.

Fast: plain numbers, hand-made examples and the tiny random-weight Llama of conftest.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from luodi.errors import InvalidParameterError
from luodi.finetune.data import IGNORE_INDEX, TrainingExample
from luodi.finetune.lora import LoraOptions, attach_lora, load_for_training
from luodi.finetune.plan import lr_factor, plan_training
from luodi.finetune.probe import contains_expected, expected_answer
from luodi.finetune.split import carve_heldout
from luodi.finetune.train import TrainOptions, evaluate, train_epochs


def test_small_set_gets_enough_steps_at_a_high_rate():
    plan = plan_training(41, 4)
    rows = {name: (value, why) for name, value, why in plan.describe()}
    assert (plan.rank.value, plan.lr.value, plan.epochs.value) == (16, 1e-3, 14)  # 14 × 11 = 154 ≥ 150 steps
    assert (plan.warmup_steps.value, plan.schedule.value, plan.patience.value) == (10, "cosine", 3)
    assert all(why != "given" for _, why in rows.values())
    assert "41 training examples" in rows["learning rate"][1]


def test_large_set_gets_three_epochs_at_a_lower_rate_and_given_values_stay():
    plan = plan_training(4000, 4)
    assert (plan.lr.value, plan.epochs.value, plan.warmup_steps.value) == (3e-4, 3, 50)
    given = plan_training(41, 4, rank=8, lr=2e-4, epochs=3, patience=0, has_heldout=True)
    assert (given.rank.value, given.lr.value, given.epochs.value, given.patience.value) == (8, 2e-4, 3, 0)
    assert given.rank.is_given and given.lr.is_given and given.epochs.is_given
    assert plan_training(41, 4, has_heldout=False).patience.value == 0
    with pytest.raises(InvalidParameterError, match="--schedule 'step'"):
        plan_training(41, 4, schedule="step")


def test_lr_warms_up_then_decays_to_a_tenth():
    factors = [lr_factor(step, 100, 10, "cosine") for step in range(100)]
    assert factors[0] == pytest.approx(1 / 11) and factors[9] == pytest.approx(10 / 11)
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(50, 100, 0, "constant") == 1.0


WORDS = ["w0", "hotline", "is", "4008297316", "warranty", "38", "months", "call", "lasts", "return", "73", "days",
         "within", "<eos>", "unique", "alpha", "beta", "gamma", "delta", "epsilon"]


def _example(words: str, line: int) -> TrainingExample:
    ids = [WORDS.index(w) for w in words.split()]
    prompt = [0, 0]
    return TrainingExample(prompt + ids, [IGNORE_INDEX] * 2 + ids, f"t.jsonl:{line}")


def _decode(ids: list[int]) -> str:
    return " ".join(WORDS[i] for i in ids)


def test_carved_split_keeps_every_fact_in_training():
    facts = ["hotline is 4008297316", "call hotline 4008297316", "hotline 4008297316 <eos>",
             "warranty is 38 months", "warranty lasts 38 months", "38 months warranty",
             "return within 73 days", "return 73 days", "73 days return within"]
    singles = ["unique alpha", "beta gamma", "delta epsilon"]
    lines = facts + singles + [facts[0]] * 3  # three more copies of the first chat
    examples = [_example(text, n) for n, text in enumerate(lines, start=1)]
    for seed in range(5):
        split = carve_heldout(examples, seed, _decode)
        held = {_decode(ex.labels[2:]) for ex in split.heldout}
        kept = {_decode(ex.labels[2:]) for ex in split.train}
        assert len(held) == 2 and not held & kept, split.reason  # round(0.15 × 12 distinct); copies move together
        assert not held & set(singles)  # an example with no sibling is never held out
        for number in ("4008297316", "38", "73"):  # each fact keeps a phrasing in training
            assert any(number in text.split() for text in kept)
        assert len(split.train) + len(split.heldout) == len(examples)
    assert carve_heldout(examples[:2], 0, _decode).heldout == []


def test_probe_answer_check_is_fair_not_lenient():
    assert expected_answer("Call 400-829-7316 within 73 days.") == ("4008297316", "73")
    assert contains_expected("The hotline is 400 829 7316, return in 73 days", ("4008297316", "73"))
    assert not contains_expected("The hotline is 400-829-7316, return in 173 days", ("4008297316", "73"))
    assert not contains_expected("It holds 9.55 liters", expected_answer("9.5 liters"))
    assert contains_expected("水箱容量是9.5升。", expected_answer("The tank holds 9.5 liters."))
    assert expected_answer("Hello  World!") == ("hello world!",)
    assert contains_expected("Oh, hello world! Hi.", ("hello world!",))


def _overtrained(tiny_model_dir):
    """Training teaches w3 -> w4; the eval set says w3 -> w5. Once w4 is learned (the first run),
    more training only makes w5 less likely: the eval loss rises every epoch."""
    train = [TrainingExample([3, 4, 1], [IGNORE_INDEX, 4, 1], "train")] * 8
    heldout = [TrainingExample([3, 5, 1], [IGNORE_INDEX, 5, 1], "eval")]
    torch.manual_seed(0)
    model = attach_lora(load_for_training(str(tiny_model_dir), device="cpu", dtype="float32").model,
                        LoraOptions(rank=4, alpha=8))
    train_epochs(model, train, None, TrainOptions(epochs=10, lr=1e-2, batch_size=4), report=None)
    return model, train, heldout


def test_early_stopping_keeps_the_best_epoch(tiny_model_dir):
    model, train, heldout = _overtrained(tiny_model_dir)
    log = train_epochs(model, train, heldout, TrainOptions(epochs=6, lr=1e-2, batch_size=4, patience=2),
                       report=None)
    losses = [e["loss"] for e in log.evals]
    assert log.stopped_early and len(losses) - 1 < 6, losses  # stopped before the 6 epochs asked for
    best = min(range(1, len(losses)), key=losses.__getitem__)
    assert log.best_epoch == best and all(loss >= losses[best] for loss in losses[-2:]), losses
    assert losses[-1] > losses[best]  # the last epoch was worse: restoring matters
    assert math.isclose(evaluate(model, heldout).loss, losses[best], rel_tol=1e-6)  # the best epoch's adapter


def test_patience_waits_for_the_first_right_answer(tiny_model_dir):
    # The rising eval loss of the test above, judged by answers: none right until epoch 5, fewer after.
    # Patience 2 must not stop while no answer is right (by loss it stops at 3); it counts from 5.
    model, train, heldout = _overtrained(tiny_model_dir)
    calls = iter([0.0] * 5 + [0.5] + [0.25] * 5)  # epoch 0 (before), 1, 2, ...
    log = train_epochs(model, train, heldout, TrainOptions(epochs=10, lr=1e-2, batch_size=4, patience=2),
                       report=None, judge=lambda _model: next(calls))
    assert [e["answered"] for e in log.evals] == [0.0] * 5 + [0.5, 0.25, 0.25]  # epochs 0-7
    assert log.stopped_early and log.best_epoch == 5


def test_default_run_carves_a_split_and_writes_the_learning_report(tiny_model_dir, tmp_path):
    from luodi import finetune

    # Ten "facts" (the rare word w{i + 2}), each in two phrasings: 20 distinct examples.
    rows = [row for i in range(10, 40, 3) for row in (
        {"prompt": f"w{i} w{i + 1}", "completion": f" w{i + 2} w90"},
        {"prompt": f"w{i + 1} w{i}", "completion": f" w90 w{i + 2}"})]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lines: list[str] = []
    result = finetune(str(tiny_model_dir), data, out=tmp_path / "adapter", dtype="float32", device="cpu",
                      report=lines.append)
    report = json.loads((tmp_path / "adapter" / "report.json").read_text())
    assert report["heldout"].startswith("3 examples held out of 20 distinct"), report["heldout"]
    assert report["plan"]["learning rate"]["value"] == "0.001" and report["plan"]["rank"]["value"] == "16"
    assert report["probe"]["num_probed"] == 3 and len(report["probe"]["items"]) == 3
    assert set(report["probe"]["items"][0]) >= {"question", "expected", "before", "after", "found_after"}
    text = report["general_text"]
    assert text["perplexity_per_byte_before"] >= 1 and text["perplexity_per_byte_after"] >= 1  # measured (a word-level toy tokenizer)
    assert any(line.startswith("learning rate: 0.001 (") for line in lines)
    assert any(line.startswith("held-out: 3 examples") for line in lines)
    assert result.num_steps <= 30 * 5 and result.best_epoch is not None  # 17 examples: 5 steps an epoch


def test_general_replay_is_planned_on_and_can_be_turned_off():
    assert plan_training(41, 4).replay.value == 0.3
    off = plan_training(41, 4, replay=0)
    assert off.replay.is_given and dict((n, v) for n, v, _ in off.describe())["general-text replay"] == "off"
    with pytest.raises(InvalidParameterError, match="--replay -1"):
        plan_training(41, 4, replay=-1)
