"""`luodi finetune` and `luodi merge`: train a LoRA adapter on a JSONL file, fold it into the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from luodi.cli.options import DEFAULT_MODEL, DeviceOpt, ModelOpt

out = Console()
PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def finetune(
    data: Annotated[Path, typer.Option("--data", help="Training JSONL: chat {\"messages\": ...} or {\"prompt\", \"completion\"}.")],
    model: ModelOpt = DEFAULT_MODEL,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="Held-out JSONL for early stopping and the probe. Default: a split carved from --data (printed).")] = None,
    method: Annotated[str, typer.Option(help="lora")] = "lora",
    rank: Annotated[int | None, typer.Option(help="LoRA rank r. Default: 16.")] = None,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha (the update is scaled by alpha / r). Default: 2 × rank.")] = None,
    target: Annotated[str, typer.Option(help="Comma-separated projections to adapt.")] = PROJECTIONS,
    epochs: Annotated[int | None, typer.Option(help="Most passes over the training file. Default: enough for ≥ 150 steps (3-30).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak AdamW learning rate. Default: 1e-3 up to 1000 examples, else 3e-4.")] = None,
    warmup_steps: Annotated[int | None, typer.Option("--warmup-steps", help="Linear warm-up steps. Default: 6% of the steps, at most 50.")] = None,
    schedule: Annotated[str | None, typer.Option(help="cosine | linear | constant decay after warm-up. Default: cosine.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after this many epochs without a better held-out result: answers right, then loss (0: never). Default: 3.")] = None,
    replay: Annotated[float | None, typer.Option(help="Weight of the general-text loss trained beside yours each step, so the model keeps what it knew (0: off). Default: 0.3.")] = None,
    max_seq_len: Annotated[int, typer.Option("--max-seq-len", help="Longest example in tokens (longer ones are errors).")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per optimizer step.")] = 4,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations per layer: ~30% less memory, up to ~20% slower.")] = False,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 (base weights; adapters are always fp32).")] = "bfloat16",
    seed: Annotated[int, typer.Option(help="Seed for adapter init, data order and the held-out split.")] = 0,
    checks: Annotated[bool, typer.Option("--checks/--no-checks", help="Probe held-out answers and general-text perplexity before and after.")] = True,
    device: DeviceOpt = "auto",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where the adapter, report.json, loss.json and loss.png go.")] = Path("adapter"),
) -> None:
    """Fine-tune a LoRA adapter (peft) on a JSONL file; prints each choice made and what it taught."""
    from luodi.finetune.report import summary_lines
    from luodi.finetune.train import finetune as run

    targets = tuple(t.strip() for t in target.split(",") if t.strip())
    result = run(
        model, data, eval_data=eval_data, out=out_dir, method=method, rank=rank, alpha=alpha, target=targets,
        epochs=epochs, lr=lr, warmup_steps=warmup_steps, schedule=schedule, patience=patience, replay=replay,
        max_seq_len=max_seq_len, batch_size=batch_size, gradient_checkpointing=gradient_checkpointing,
        dtype=dtype, seed=seed, device=device, checks=checks, progress=True, report=out.print,
    )
    record = json.loads((result.adapter_dir / "report.json").read_text(encoding="utf-8"))
    if result.probe:
        out.print(_probe_table(record))
    table = Table(box=None, show_header=False)
    for line in summary_lines(record):
        table.add_row(line)
    table.add_row(f"steps {result.num_steps}, last train loss {result.train_loss_last:.4f}, "
                  f"{result.tokens_per_s:.0f} tokens/s, {result.wall_seconds:.0f} s in all")
    out.print(table)
    out.print(f"[green]✓[/green] adapter saved to {result.adapter_dir} (report.json, loss.png beside it)  "
              f"(merge it: luodi merge --model {model} --adapter {result.adapter_dir} --out DIR)")


def _probe_table(record: dict) -> Table:
    table = Table(title="held-out probe: greedy answers before → after training")
    for column in ("prompt", "expected", "before", "after"):
        table.add_column(column, overflow="fold")
    mark = lambda found: "[green]✓[/green]" if found else "[red]✗[/red]"  # noqa: E731
    for item in record["probe"]["items"]:
        table.add_row(_tail(item["question"], 60), " ".join(item["expected"])[:40],
                      f"{mark(item['found_before'])} {item['before'][:60]}",
                      f"{mark(item['found_after'])} {item['after'][:60]}")
    return table


def _tail(text: str, width: int) -> str:
    """The end of a rendered prompt: the last user turn is what matters."""
    return text if len(text) <= width else "…" + text[-width:]


def merge(
    adapter: Annotated[Path, typer.Option("--adapter", help="A `luodi finetune` output directory.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where the merged model goes (Luodi's saved format).")],
    model: ModelOpt = DEFAULT_MODEL,
    dtype: Annotated[str, typer.Option(help="bfloat16 | float32: how the merged weights are stored.")] = "bfloat16",
) -> None:
    """Merge a LoRA adapter into its base model and save it (quantize or serve it like any model)."""
    from luodi.finetune.merge import merge_adapter

    result = merge_adapter(model, adapter, out_dir, dtype=dtype)
    out.print(f"[green]✓[/green] merged {result.num_merged} adapted layers into {result.out}  "
              f"(use it with --model {result.out})")
