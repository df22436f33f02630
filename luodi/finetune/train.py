"""The LoRA training loop: load, attach adapters, AdamW over packed batches, evaluate, save.

`finetune()` is the whole job (what `luodi finetune` and `from luodi import finetune` call): plan
the settings not given (`plan`), carve a held-out split if no eval file is given (`split`), probe
and score general text before and after (`probe`), train, keep the best epoch, write the report.
`train_epochs()` and `evaluate()` are its parts, usable on a model already in memory (the tests
do). The learning rate warms up linearly and decays per step (`plan.lr_factor`); with eval
examples, training stops after `patience` epochs without a better eval loss and the best epoch's
adapter is restored. The loss is mean cross-entropy over the trained tokens of a batch (`forward.batch_loss`);
evaluation reports the token-mean loss over a whole file and its perplexity.

Knows models, peft (through `lora`), data and files; nothing of the engine or serving.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.finetune.data import TrainingExample, load_dataset
from luodi.finetune.forward import batch_loss, num_trained_tokens, pack, token_losses, trained_logits
from luodi.finetune.lora import (
    PROJECTIONS, LoraOptions, attach_lora, autocast, enable_gradient_checkpointing, load_for_training,
    mixed_precision, save_adapter, trainable_parameters,
)
from luodi.finetune.plan import SCHEDULES, TrainingPlan, lr_factor, plan_training
from luodi.finetune.replay import Replay, ReplayStream, general_replay
from luodi.finetune.probe import (ProbeResult, compare, contains_expected, general_perplexity, greedy_answers,
                                  probe_cases)
from luodi.finetune.report import learning_record, summary_lines, write_learning_report, write_loss_report
from luodi.finetune.split import carve_heldout
from luodi.loading.tokenizer import Tokenizer
from luodi.loading.catalog import resolve_model
from luodi.models.loader import load_tokenizer

METHODS = ("lora",)
FORGETTING_WARN_RISE = 0.05  # general-text perplexity per byte may rise this much before a warning


@dataclass(frozen=True, slots=True)
class TrainOptions:
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 4
    max_seq_len: int = 512
    gradient_checkpointing: bool = False
    seed: int = 0
    warmup_steps: int = 0
    schedule: str = "constant"  # | "cosine" | "linear" (see `plan.lr_factor`)
    patience: int = 0  # stop after this many evaluations without a better eval loss (0: never)

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("max_seq_len", 2), ("warmup_steps", 0),
                              ("patience", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                flag = "--" + name.replace("_", "-")
                raise InvalidParameterError(f"{flag} {value!r} must be an integer ≥ {minimum}", name)
        if not (isinstance(self.lr, int | float) and 0 < self.lr < 1):
            raise InvalidParameterError(f"--lr {self.lr!r} must be a number in (0, 1), e.g. 1e-3", "lr")
        if self.schedule not in SCHEDULES:
            raise InvalidParameterError(
                f"--schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}", "schedule")


@dataclass(frozen=True, slots=True)
class EvalResult:
    loss: float  # mean cross-entropy per trained token
    num_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))


@dataclass(slots=True)
class TrainLog:
    """What `loss.json` records: per-step train loss, eval before training and after each epoch."""

    steps: list[dict[str, float]] = field(default_factory=list)  # {"step", "epoch", "loss", "tokens"}
    evals: list[dict[str, float]] = field(default_factory=list)  # {"epoch", "loss", "perplexity"}
    num_tokens: int = 0  # every token of every training batch (prompt tokens included)
    train_seconds: float = 0.0
    best_epoch: int | None = None  # the epoch whose adapter was kept (most answers right, then lowest loss)
    stopped_early: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.train_seconds if self.train_seconds else 0.0


def batches(
    examples: list[TrainingExample], batch_size: int, rng: random.Random,
) -> list[list[TrainingExample]]:
    order = list(examples)
    rng.shuffle(order)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def evaluate(model: nn.Module, examples: list[TrainingExample], batch_size: int = 8) -> EvalResult:
    """Token-mean cross-entropy over every trained token of `examples`."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for i in range(0, len(examples), batch_size):
        with autocast(model):
            logits, targets = trained_logits(model, pack(examples[i:i + batch_size], device))
        total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        count += int(targets.numel())
    model.train(was_training)
    return EvalResult(total / max(count, 1), count)


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, examples: list[TrainingExample],
    options: TrainOptions, rng: random.Random, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    replay: ReplayStream | None = None,
) -> Iterator[tuple[float, int]]:
    """One pass over shuffled batches; yields (task loss, num tokens) after each optimizer step.
    With `replay`, each step's gradient also holds its weighted loss on general text."""
    device = next(model.parameters()).device
    model.train()
    for group in batches(examples, options.batch_size, rng):
        with autocast(model):
            loss, task_loss = _step_loss(model, group, replay, device)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        yield float(task_loss.detach()), sum(len(ex.input_ids) for ex in group)


def _step_loss(model: nn.Module, group: list[TrainingExample], replay: ReplayStream | None,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to minimize, the task loss): the task's mean loss, plus with `replay` its weight
    times the mean loss on a window of general text — both in one forward over one packed batch
    (two smaller passes cost ~1.25x as much on SmolLM2 with 2 threads: each layer's fixed cost
    is paid twice)."""
    if replay is None:
        loss = batch_loss(model, pack(group, device))
        return loss, loss
    losses = token_losses(model, pack(group + next(replay.batches), device))
    split = num_trained_tokens(group)
    task = losses[:split].mean()
    return task + replay.weight * losses[split:].mean(), task


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # No weight decay: LoRA's B starts at zero and is meant to stay small on its own.
    return torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=0.0)


def make_scheduler(optimizer: torch.optim.Optimizer, options: TrainOptions, num_steps: int,
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, num_steps, options.warmup_steps, options.schedule))


def train_epochs(
    model: nn.Module, train: list[TrainingExample], eval_examples: list[TrainingExample] | None,
    options: TrainOptions, *, progress: bool = False, report: Callable[[str], None] | None = None,
    replay: Replay | None = None, judge: Callable[[nn.Module], float] | None = None,
) -> TrainLog:
    """Train a model that already has its adapters; eval before training and after each epoch.

    With eval examples, the adapter of the best epoch is kept (restored at the end if later epochs
    did worse), and with `options.patience` training stops after that many epochs without a better
    one (with a `judge`, counted only once some held-out answer came out right). Best: the most
    held-out answers right (`judge`: the fraction, when given), then the lowest eval loss. With
    `replay`, every step also trains on general text."""
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    num_steps = options.epochs * math.ceil(len(train) / options.batch_size)
    optimizer = make_optimizer(model, options.lr)
    scheduler = make_scheduler(optimizer, options, num_steps)
    log = TrainLog()
    best = _Best()
    stream = replay.stream(options.seed) if replay is not None else None
    with mixed_precision(model):
        _record_eval(model, eval_examples, 0, log, report, judge)
    with _progress_bar(num_steps, progress) as advance, mixed_precision(model):
        for epoch in range(1, options.epochs + 1):
            start = time.perf_counter()
            for loss, num_tokens in train_epoch(model, optimizer, train, options, rng, scheduler, stream):
                log.train_seconds += time.perf_counter() - start
                log.num_tokens += num_tokens
                step = {"step": len(log.steps) + 1, "epoch": epoch, "loss": loss, "tokens": num_tokens,
                        "lr": scheduler.get_last_lr()[0]}
                log.steps.append(step)
                advance(loss, log.tokens_per_s, epoch)
                start = time.perf_counter()
            _record_eval(model, eval_examples, epoch, log, report, judge)
            best.offer(model, log, epoch)
            if options.patience and best.judged_right(judge) and epoch - best.epoch >= options.patience \
                    and epoch < options.epochs:
                log.stopped_early = True
                _say(report, f"early stop after epoch {epoch}: no better held-out result for {options.patience} epochs")
                break
    best.restore(model, log, report)
    return log


class _Best:
    """The adapter tensors of the best trained epoch so far: the most held-out answers right, then
    the lowest eval loss (kept in memory: a LoRA adapter is a few MB). Epoch 0, the untrained
    adapter, is never the one kept."""

    def __init__(self) -> None:
        self.epoch = 0
        self.key: tuple[float, float] = (-math.inf, -math.inf)
        self.state: list[torch.Tensor] | None = None

    def offer(self, model: nn.Module, log: TrainLog, epoch: int) -> None:
        if not log.evals or log.evals[-1]["epoch"] != epoch:
            return
        key = (log.evals[-1].get("answered", 0.0), -log.evals[-1]["loss"])
        if key > self.key:
            self.epoch, self.key = epoch, key
            self.state = [p.detach().clone() for p in trainable_parameters(model)]

    def judged_right(self, judge: Callable[[nn.Module], float] | None) -> bool:
        """Whether patience may count: always when judged by loss, and with a judge only once some
        held-out answer came out right. Until then a falling loss says little about facts; on the
        twelve-fact set (seed 1) no answer was right by epoch 7, and stopping there kept 10 of 24."""
        return judge is None or self.key[0] > 0

    def restore(self, model: nn.Module, log: TrainLog, report: Callable[[str], None] | None) -> None:
        if self.state is None:
            return
        log.best_epoch = self.epoch
        last = int(log.evals[-1]["epoch"])
        if self.epoch == last:
            return
        with torch.no_grad():
            for param, saved in zip(trainable_parameters(model), self.state, strict=True):
                param.copy_(saved)
        chosen = next(e for e in log.evals if e["epoch"] == self.epoch)
        answered = f"{chosen['answered']:.0%} of held-out answers right, " if "answered" in chosen else ""
        _say(report, f"keeping the adapter of epoch {self.epoch} ({answered}eval loss {chosen['loss']:.4f})")


def _say(report: Callable[[str], None] | None, line: str) -> None:
    if report is not None:
        report(line)


def _record_eval(
    model: nn.Module, examples: list[TrainingExample] | None, epoch: int, log: TrainLog,
    report: Callable[[str], None] | None, judge: Callable[[nn.Module], float] | None = None,
) -> None:
    if not examples:
        return
    result = evaluate(model, examples)
    record = {"epoch": epoch, "loss": result.loss, "perplexity": result.perplexity}
    answered = ""
    if judge is not None:
        record["answered"] = judge(model)
        answered = f", held-out answers right {record['answered']:.0%}"
    log.evals.append(record)
    if report is not None:
        when = "before training" if epoch == 0 else f"after epoch {epoch}"
        report(f"eval loss {when}: {result.loss:.4f} (perplexity {result.perplexity:.2f}){answered}")


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Callable[[float, float, int], None]]:
    """Progress on stderr with loss and tokens/s (plain lines off a terminal); yields `advance(loss, tok_s, epoch)`."""
    from luodi.progress import progress

    fields = {"loss": float("nan"), "tok_s": 0.0, "epoch": 1}
    with progress("training", total, enabled=enabled, unit="steps", fields=fields,
                  detail="epoch {epoch} · loss {loss:.4f} · {tok_s:.0f} tok/s") as advance:
        yield lambda loss, tok_s, epoch: advance(loss=loss, tok_s=tok_s, epoch=epoch)


@dataclass(frozen=True, slots=True)
class FinetuneResult:
    adapter_dir: Path
    eval_loss_before: float | None
    eval_loss_after: float | None  # of the adapter kept (the best epoch's)
    train_loss_last: float
    tokens_per_s: float
    num_steps: int
    plan: TrainingPlan
    heldout: str  # where the eval examples came from
    best_epoch: int | None
    stopped_early: bool
    probe: list[ProbeResult]
    general_ppl_before: float | None  # perplexity per byte of the bundled general text
    general_ppl_after: float | None
    wall_seconds: float

    @property
    def general_ppl_rise(self) -> float | None:
        if self.general_ppl_before is None or self.general_ppl_after is None:
            return None
        return self.general_ppl_after / self.general_ppl_before - 1

    @property
    def is_forgetting(self) -> bool:
        rise = self.general_ppl_rise
        return rise is not None and rise > FORGETTING_WARN_RISE


def finetune(
    model: str, data: str | Path, *, eval_data: str | Path | None = None, out: str | Path = "adapter",
    method: str = "lora", rank: int | None = None, alpha: float | None = None,
    target: tuple[str, ...] | list[str] = PROJECTIONS,
    epochs: int | None = None, lr: float | None = None, max_seq_len: int = 512, batch_size: int = 4,
    warmup_steps: int | None = None, schedule: str | None = None, patience: int | None = None,
    replay: float | None = None, gradient_checkpointing: bool = False, dtype: str = "bfloat16", seed: int = 0,
    device: str = "auto",
    checks: bool = True, progress: bool = False, report: Callable[[str], None] | None = print,
) -> FinetuneResult:
    """Train a LoRA adapter for `model` on the JSONL file `data`; write it and its report to `out`.

    Settings left as None are planned from the dataset's size (`plan.plan_training`; alpha: 2 × rank).
    Without `eval_data`, a held-out split is carved from `data` (`split.carve_heldout`). With
    `checks`, greedy answers to the held-out prompts and the perplexity of general text are
    measured before and after training. `out` receives adapter_config.json +
    adapter_model.safetensors (peft's format), report.json, loss.json and loss.png. `report` gets
    one line per choice and evaluation (None: silent).
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise InvalidParameterError(f"--method {method!r} is not one of {', '.join(METHODS)}", "method")
    out = Path(out)
    tokenizer = load_tokenizer(resolve_model(model))  # data errors surface before the model loads
    train, eval_examples, heldout = _datasets(data, eval_data, tokenizer, max_seq_len, seed)
    plan = plan_training(len(train), batch_size, rank=rank, lr=lr, epochs=epochs, warmup_steps=warmup_steps,
                         schedule=schedule, patience=patience, replay=replay, has_heldout=bool(eval_examples))
    _say(report, f"held-out: {heldout}")
    for name, value, why in plan.describe():
        _say(report, f"{name}: {value} ({why})")
    lora, options = _settings(plan, alpha, target, batch_size, max_seq_len, gradient_checkpointing, seed)
    loaded = load_for_training(model, device=device, dtype=dtype)
    torch.manual_seed(seed)  # LoRA's A is initialized at random
    peft_model = attach_lora(loaded.model, lora)
    if gradient_checkpointing:
        enable_gradient_checkpointing(peft_model)
    checker = _Checker(peft_model, loaded.tokenizer, loaded.config.max_position_embeddings,
                       eval_examples if checks else [], enabled=checks, report=report)
    replay_weight = float(plan.replay.value)
    general = general_replay(loaded.tokenizer, replay_weight) if replay_weight else None
    log = train_epochs(peft_model, train, eval_examples, options, progress=progress, report=report, replay=general,
                       judge=checker.answered if checker.cases else None)
    probe, ppl_after = checker.after()
    save_adapter(peft_model, out, model)
    evals = {int(e["epoch"]): e["loss"] for e in log.evals}
    result = FinetuneResult(
        adapter_dir=out, eval_loss_before=evals.get(0), eval_loss_after=evals.get(log.best_epoch or -1),
        train_loss_last=log.steps[-1]["loss"], tokens_per_s=log.tokens_per_s, num_steps=len(log.steps),
        plan=plan, heldout=heldout, best_epoch=log.best_epoch, stopped_early=log.stopped_early, probe=probe,
        general_ppl_before=checker.ppl_before, general_ppl_after=ppl_after,
        wall_seconds=time.perf_counter() - started,
    )
    meta = {"model": model, "data": str(data), "eval": str(eval_data or ""), "dtype": dtype, "rank": lora.rank,
            "alpha": lora.alpha, "lr": options.lr}
    _write_reports(result, log, meta, report)
    return result


def _settings(
    plan: TrainingPlan, alpha: float | None, target: tuple[str, ...] | list[str], batch_size: int, max_seq_len: int,
    gradient_checkpointing: bool, seed: int,
) -> tuple[LoraOptions, TrainOptions]:
    """The adapter's and the loop's settings from the plan (alpha: 2 × rank unless given)."""
    rank = int(plan.rank.value)
    lora = LoraOptions(rank=rank, alpha=float(alpha if alpha is not None else 2 * rank), target_modules=tuple(target))
    options = TrainOptions(epochs=int(plan.epochs.value), lr=float(plan.lr.value), batch_size=batch_size,
                           max_seq_len=max_seq_len, gradient_checkpointing=gradient_checkpointing, seed=seed,
                           warmup_steps=int(plan.warmup_steps.value), schedule=str(plan.schedule.value),
                           patience=int(plan.patience.value))
    return lora, options


def _write_reports(result: FinetuneResult, log: TrainLog, meta: dict, report: Callable[[str], None] | None) -> None:
    """report.json, loss.json and loss.png beside the adapter; the forgetting warning if it applies."""
    record = learning_record(result, meta)
    write_loss_report(log, result.adapter_dir, meta=meta, summary=summary_lines(record))
    write_learning_report(record, result.adapter_dir)
    if result.is_forgetting:
        _say(report, forgetting_warning(result))


def _datasets(
    data: str | Path, eval_data: str | Path | None, tokenizer: Tokenizer, max_seq_len: int, seed: int,
) -> tuple[list[TrainingExample], list[TrainingExample], str]:
    """(training examples, eval examples, where the eval examples came from)."""
    train = load_dataset(data, tokenizer, max_seq_len=max_seq_len)
    if eval_data:
        eval_examples = load_dataset(eval_data, tokenizer, max_seq_len=max_seq_len)
        return train, eval_examples, f"{len(eval_examples)} examples from {eval_data}"
    split = carve_heldout(train, seed, tokenizer.decode)
    return split.train, split.heldout, split.reason


class _Checker:
    """The before/after measurements: probe answers and general-text perplexity."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, max_positions: int,
                 examples: list[TrainingExample], *, enabled: bool, report: Callable[[str], None] | None) -> None:
        self.model, self.tokenizer, self.max_positions = model, tokenizer, max_positions
        self.enabled, self.report = enabled, report
        self.cases = probe_cases(examples, tokenizer)
        self.answers_before = greedy_answers(model, tokenizer, self.cases) if self.cases else []
        self.ppl_before = general_perplexity(model, tokenizer, max_positions) if enabled else None
        if self.ppl_before is not None:
            _say(report, f"general text perplexity per byte before training: {self.ppl_before:.4f}")

    def answered(self, model: nn.Module) -> float:
        """The fraction of probed held-out examples whose greedy answer holds the expected answer (called
        between epochs, inside `mixed_precision`, whose forwards need autocast)."""
        with autocast(model):
            answers = greedy_answers(model, self.tokenizer, self.cases)
        return sum(contains_expected(a, c.expected) for a, c in zip(answers, self.cases, strict=True)) / len(answers)

    def after(self) -> tuple[list[ProbeResult], float | None]:
        answers = greedy_answers(self.model, self.tokenizer, self.cases) if self.cases else []
        ppl = general_perplexity(self.model, self.tokenizer, self.max_positions) if self.enabled else None
        if ppl is not None and self.ppl_before is not None:
            _say(self.report, f"general text perplexity per byte after training: {ppl:.4f} "
                              f"({ppl / self.ppl_before - 1:+.2%})")
        return compare(self.cases, self.answers_before, answers), ppl


def forgetting_warning(result: FinetuneResult) -> str:
    return (f"warning: perplexity on general text rose {result.general_ppl_rise:.1%} (more than "
            f"{FORGETTING_WARN_RISE:.0%}): the adapter made the model worse at what it knew — lower --lr, "
            "fewer --epochs or a smaller --rank, or mix general examples into the training file")
