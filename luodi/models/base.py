"""`CausalLM`: the head every family shares — backbone, lm_head, tied weights, logits."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from luodi.models.config import ModelConfig
from luodi.models.layers import AttentionBackend


class CausalLM(nn.Module):
    """`forward(input_ids [T], positions [T], kv, logits_indices [N] | None) -> logits [N, V]`.

    Subclasses name their backbone in `model_class`: a module mapping (input_ids, positions, kv)
    to final hidden states [T, hidden].
    """

    model_class: type[nn.Module]

    @staticmethod
    def sanitize(
        config: ModelConfig, weights: Iterable[tuple[str, torch.Tensor]],
    ) -> Iterable[tuple[str, torch.Tensor]]:
        """The checkpoint's (HF name, tensor) pairs as this module names its parameters (mlx-lm's
        `sanitize`): a family whose checkpoints pack or rename tensors overrides it."""
        return weights

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def tie_weights(self) -> None:
        if not self.config.tie_word_embeddings:
            return
        embedding = self.model.embed_tokens
        if isinstance(embedding, nn.Embedding):
            self.lm_head.weight = embedding.weight
        else:  # a quantized table (luodi.quant.linear.QuantEmbedding) is the lm_head itself
            self.lm_head = embedding.table

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv: AttentionBackend,
        logits_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.model(input_ids, positions, kv)
        if logits_indices is not None:
            hidden = hidden[logits_indices]
        return self.compute_logits(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()
        cap = self.config.final_logit_softcapping
        if cap is not None:  # Gemma 2 style: tanh-squash logits into (-cap, cap)
            logits = torch.tanh(logits / cap) * cap
        return logits
