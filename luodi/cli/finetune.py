"""`luodi finetune` and `luodi merge`: train a LoRA adapter on a JSONL file, fold it into the model."""

from __future__ import annotations

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
    eval_data: Annotated[Path | None, typer.Option("--eval", help="Held-out JSONL: loss before training and after each epoch.")] = None,
    method: Annotated[str, typer.Option(help="lora")] = "lora",
    rank: Annotated[int, typer.Option(help="LoRA rank r.")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (the update is scaled by alpha / r).")] = 16.0,
    target: Annotated[str, typer.Option(help="Comma-separated projections to adapt.")] = PROJECTIONS,
    epochs: Annotated[int, typer.Option(help="Passes over the training file.")] = 3,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-4,
    max_seq_len: Annotated[int, typer.Option("--max-seq-len", help="Longest example in tokens (longer ones are errors).")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per optimizer step.")] = 4,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations per layer: ~30% less memory, up to ~20% slower.")] = False,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 (base weights; adapters are always fp32).")] = "bfloat16",
    seed: Annotated[int, typer.Option(help="Seed for adapter init and data order.")] = 0,
    device: DeviceOpt = "auto",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where the adapter, loss.json and loss.png go.")] = Path("adapter"),
) -> None:
    """Fine-tune a LoRA adapter (peft) on a JSONL file; prints eval loss before and after."""
    from luodi.finetune.train import finetune as run

    targets = tuple(t.strip() for t in target.split(",") if t.strip())
    result = run(
        model, data, eval_data=eval_data, out=out_dir, method=method, rank=rank, alpha=alpha, target=targets,
        epochs=epochs, lr=lr, max_seq_len=max_seq_len, batch_size=batch_size,
        gradient_checkpointing=gradient_checkpointing, dtype=dtype, seed=seed, device=device, progress=True,
        report=out.print,
    )
    table = Table(box=None, show_header=False)
    if result.eval_loss_before is not None and result.eval_loss_after is not None:
        table.add_row("eval loss", f"{result.eval_loss_before:.4f} → {result.eval_loss_after:.4f}")
    table.add_row("last train loss", f"{result.train_loss_last:.4f}")
    table.add_row("steps", str(result.num_steps))
    table.add_row("speed", f"{result.tokens_per_s:.0f} tokens/s")
    out.print(table)
    out.print(f"[green]✓[/green] adapter saved to {result.adapter_dir}  "
              f"(merge it: luodi merge --model {model} --adapter {result.adapter_dir} --out DIR)")


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
