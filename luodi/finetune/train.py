"""The LoRA training loop: load, attach adapters, AdamW over packed batches, evaluate, save.

`finetune()` is the whole job (what `luodi finetune` and `from luodi import finetune` call);
`train_epochs()` and `evaluate()` are its parts, usable on a model already in memory (the tests
do). The loss is mean cross-entropy over the trained tokens of a batch (`forward.batch_loss`);
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
from luodi.finetune.forward import batch_loss, pack, trained_logits
from luodi.finetune.lora import (
    PROJECTIONS, LoraOptions, attach_lora, autocast, enable_gradient_checkpointing, load_for_training,
    mixed_precision, save_adapter, trainable_parameters,
)
from luodi.finetune.report import write_loss_report
from luodi.loading.catalog import resolve_model
from luodi.models.loader import load_tokenizer

METHODS = ("lora",)


@dataclass(frozen=True, slots=True)
class TrainOptions:
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 4
    max_seq_len: int = 512
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("max_seq_len", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                flag = "--" + name.replace("_", "-")
                raise InvalidParameterError(f"{flag} {value!r} must be an integer ≥ {minimum}", name)
        if not (isinstance(self.lr, int | float) and 0 < self.lr < 1):
            raise InvalidParameterError(f"--lr {self.lr!r} must be a number in (0, 1), e.g. 2e-4", "lr")


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

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.train_seconds if self.train_seconds else 0.0


@dataclass(frozen=True, slots=True)
class FinetuneResult:
    adapter_dir: Path
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss_last: float
    tokens_per_s: float
    num_steps: int


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
    options: TrainOptions, rng: random.Random,
) -> Iterator[tuple[float, int]]:
    """One pass over shuffled batches; yields (loss, num tokens) after each optimizer step."""
    device = next(model.parameters()).device
    model.train()
    for group in batches(examples, options.batch_size, rng):
        batch = pack(group, device)
        with autocast(model):
            loss = batch_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        yield float(loss.detach()), batch.num_tokens


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # No weight decay: LoRA's B starts at zero and is meant to stay small on its own.
    return torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=0.0)


def train_epochs(
    model: nn.Module, train: list[TrainingExample], eval_examples: list[TrainingExample] | None,
    options: TrainOptions, *, progress: bool = False, report: Callable[[str], None] | None = None,
) -> TrainLog:
    """Train a model that already has its adapters; eval before training and after each epoch."""
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    optimizer = make_optimizer(model, options.lr)
    log = TrainLog()
    with mixed_precision(model):
        _record_eval(model, eval_examples, 0, log, report)
    num_steps = options.epochs * math.ceil(len(train) / options.batch_size)
    with _progress_bar(num_steps, progress) as advance, mixed_precision(model):
        for epoch in range(1, options.epochs + 1):
            start = time.perf_counter()
            for loss, num_tokens in train_epoch(model, optimizer, train, options, rng):
                log.train_seconds += time.perf_counter() - start
                log.num_tokens += num_tokens
                step = {"step": len(log.steps) + 1, "epoch": epoch, "loss": loss, "tokens": num_tokens}
                log.steps.append(step)
                advance(loss, log.tokens_per_s, epoch)
                start = time.perf_counter()
            _record_eval(model, eval_examples, epoch, log, report)
    return log


def _record_eval(
    model: nn.Module, examples: list[TrainingExample] | None, epoch: int, log: TrainLog,
    report: Callable[[str], None] | None,
) -> None:
    if not examples:
        return
    result = evaluate(model, examples)
    log.evals.append({"epoch": epoch, "loss": result.loss, "perplexity": result.perplexity})
    if report is not None:
        when = "before training" if epoch == 0 else f"after epoch {epoch}"
        report(f"eval loss {when}: {result.loss:.4f} (perplexity {result.perplexity:.2f})")


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Callable[[float, float, int], None]]:
    """Progress on stderr with loss and tokens/s (plain lines off a terminal); yields `advance(loss, tok_s, epoch)`."""
    from luodi.progress import progress

    fields = {"loss": float("nan"), "tok_s": 0.0, "epoch": 1}
    with progress("training", total, enabled=enabled, unit="steps", fields=fields,
                  detail="epoch {epoch} · loss {loss:.4f} · {tok_s:.0f} tok/s") as advance:
        yield lambda loss, tok_s, epoch: advance(loss=loss, tok_s=tok_s, epoch=epoch)


def finetune(
    model: str, data: str | Path, *, eval_data: str | Path | None = None, out: str | Path = "adapter",
    method: str = "lora", rank: int = 8, alpha: float = 16.0,
    target: tuple[str, ...] | list[str] = PROJECTIONS,
    epochs: int = 3, lr: float = 2e-4, max_seq_len: int = 512, batch_size: int = 4,
    gradient_checkpointing: bool = False, dtype: str = "bfloat16", seed: int = 0, device: str = "auto",
    progress: bool = False, report: Callable[[str], None] | None = print,
) -> FinetuneResult:
    """Train a LoRA adapter for `model` on the JSONL file `data`; write it and its loss curve to `out`.

    `out` receives adapter_config.json + adapter_model.safetensors (peft's format), loss.json and
    loss.png. `report` gets one line per evaluation (None: silent).
    """
    if method not in METHODS:
        raise InvalidParameterError(f"--method {method!r} is not one of {', '.join(METHODS)}", "method")
    lora = LoraOptions(rank=rank, alpha=float(alpha), target_modules=tuple(target))
    options = TrainOptions(epochs=epochs, lr=lr, batch_size=batch_size, max_seq_len=max_seq_len,
                           gradient_checkpointing=gradient_checkpointing, seed=seed)
    out = Path(out)
    tokenizer = load_tokenizer(resolve_model(model))  # data errors surface before the model loads
    train = load_dataset(data, tokenizer, max_seq_len=max_seq_len)
    eval_examples = load_dataset(eval_data, tokenizer, max_seq_len=max_seq_len) if eval_data else None
    loaded = load_for_training(model, device=device, dtype=dtype)
    torch.manual_seed(seed)  # LoRA's A is initialized at random
    peft_model = attach_lora(loaded.model, lora)
    if gradient_checkpointing:
        enable_gradient_checkpointing(peft_model)
    log = train_epochs(peft_model, train, eval_examples, options, progress=progress, report=report)
    save_adapter(peft_model, out, model)
    write_loss_report(log, out, meta={"model": model, "data": str(data), "eval": str(eval_data or ""),
                                      "dtype": dtype, "rank": rank, "alpha": alpha, "lr": lr})
    evals = [e["loss"] for e in log.evals]
    return FinetuneResult(
        adapter_dir=out, eval_loss_before=evals[0] if evals else None,
        eval_loss_after=evals[-1] if evals else None,
        train_loss_last=log.steps[-1]["loss"], tokens_per_s=log.tokens_per_s, num_steps=len(log.steps),
    )
