"""Fine-tuning: LoRA adapters (through `peft`) on Luodi's own model modules, and merging them back.

    from luodi import finetune
    result = finetune("smollm2-135m-instruct", "train.jsonl", out="adapter")

`data` turns JSONL files into token ids and loss masks; `forward` is the training forward pass
(whole sequences, causal attention, no paged KV cache); `lora` attaches, saves and loads adapters;
`plan` chooses the settings the user left out from the dataset's size; `split` carves a held-out
split when no eval file is given; `train` runs the loop (warm-up, decay, early stopping, best
epoch kept); `probe` measures what a run taught (held-out answers) and cost (general-text
perplexity); `report` writes report.json, loss.json and loss.png; `merge` folds an adapter into
the base weights and writes Luodi's saved format. This package knows models, tokenizers and files — nothing of the engine or serving.
Everything that needs `peft` imports it lazily, so importing this package costs nothing.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def finetune(*args: Any, **kwargs: Any) -> Any:
    """Train a LoRA adapter; see `luodi.finetune.train.finetune` for the arguments."""
    from luodi.finetune.train import finetune as run

    return run(*args, **kwargs)


def merge(*args: Any, **kwargs: Any) -> Any:
    """Merge an adapter into its base model; see `luodi.finetune.merge.merge_adapter`."""
    from luodi.finetune.merge import merge_adapter

    return merge_adapter(*args, **kwargs)


class _CallableModule(types.ModuleType):
    # `from luodi import finetune` binds this subpackage (the name is both the package and the
    # verb), so the module object itself is made callable: `finetune(...)` runs the function above,
    # while `from luodi.finetune.data import ...` keeps working as for any package.
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
