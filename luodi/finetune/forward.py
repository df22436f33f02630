"""The training forward pass: whole sequences, causal attention, no paged KV cache.

A batch is packed, not padded: its sequences are laid end to end as the flat `[T]` tokens the
models already take (positions restart at 0 for each), and `CausalAttention` — the
`AttentionBackend` for training — runs causal SDPA over each sequence's slice. No token is ever
padding, so the linear layers (nearly all the work) see exactly the real tokens; only attention
loops over the batch's sequences. The lm_head runs only where a label is trained (`logits_indices`),
and the loss is the mean cross-entropy over those tokens (HF's shifted causal-LM loss). With a
frozen lm_head the loss and its gradient are computed a chunk of rows at a time
(`_LinearCrossEntropy`): the fp32 logits of 512 tokens over a 49k vocabulary are 100 MB, and
fresh buffers that large cost ~6 us a 4 KiB page in faults here (~0.2 s a step, measured).

Knows the `AttentionBackend` protocol and `TrainingExample`; nothing of peft, optimizers or files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from luodi.finetune.data import IGNORE_INDEX, TrainingExample


@dataclass(frozen=True, slots=True)
class PackedBatch:
    input_ids: torch.Tensor  # [T] every sequence's tokens, end to end
    positions: torch.Tensor  # [T] 0..len-1 within each sequence
    targets: torch.Tensor  # [T] the label of the *next* token (IGNORE_INDEX at each sequence's end)
    seq_lens: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_trained(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


def pack(examples: list[TrainingExample], device: torch.device | str = "cpu") -> PackedBatch:
    """Lay `examples` end to end, with labels shifted by one inside each sequence."""
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for ex in examples:
        ids.extend(ex.input_ids)
        positions.extend(range(len(ex.input_ids)))
        targets.extend(ex.labels[1:])  # position t predicts token t + 1
        targets.append(IGNORE_INDEX)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return PackedBatch(as_tensor(ids), as_tensor(positions), as_tensor(targets),
                       tuple(len(ex.input_ids) for ex in examples))


class CausalAttention:
    """`AttentionBackend` for a packed batch: causal attention within each sequence, nothing cached."""

    def __init__(self, seq_lens: tuple[int, ...]) -> None:
        self.seq_lens = seq_lens

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """q [T, H, D], k and v [T, Hkv, D] -> [T, H, D]."""
        outs = []
        start = 0
        for n in self.seq_lens:
            # [1, H, n, D]: with a batch dimension CPU SDPA takes its flash kernel (GQA included);
            # unbatched it falls back to the math path (measured: 2-3x slower here, torch 2.13).
            qs, ks, vs = (t[start:start + n].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            mask = None
            if sliding_window is not None and n > sliding_window:
                i = torch.arange(n, device=q.device)
                mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - sliding_window)  # [n, n]
            out = F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=mask, is_causal=mask is None, scale=scale,
                enable_gqa=ks.shape[1] != qs.shape[1],
            )
            outs.append(out[0].transpose(0, 1))  # [n, H, D]
            start += n
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def attend_rotary(self, *args: object, **kwargs: object) -> None:
        return None  # no fused decode step in training: the model rotates and calls `attend`


def trained_logits(model: nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, V] at the N positions whose next token is trained, their targets [N])."""
    index = _trained_rows(batch)
    logits = model(batch.input_ids, batch.positions, CausalAttention(batch.seq_lens), index)
    return logits, batch.targets[index]


def all_logits(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Logits [T, V] at every position (for tests and evaluation of whole sequences)."""
    return model(batch.input_ids, batch.positions, CausalAttention(batch.seq_lens))


def batch_loss(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over every trained token of the batch (fp32)."""
    return token_losses(model, batch).mean()


def token_losses(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """[N] next-token cross-entropy (fp32) at each trained token, in the batch's order."""
    lm = _causal_lm(model)
    head = lm.lm_head
    if type(head) is not nn.Linear or head.weight.requires_grad or head.bias is not None:
        logits, targets = trained_logits(model, batch)  # a trained or adapted head: plain autograd
        return F.cross_entropy(logits.float(), targets, reduction="none")
    index = _trained_rows(batch)
    hidden = lm.model(batch.input_ids, batch.positions, CausalAttention(batch.seq_lens))[index]
    return _LinearCrossEntropy.apply(hidden, head.weight, batch.targets[index], lm.config.final_logit_softcapping)


def num_trained_tokens(examples: list[TrainingExample]) -> int:
    """How many rows of `token_losses` these examples take when packed."""
    return sum(label != IGNORE_INDEX for ex in examples for label in ex.labels[1:])


def _trained_rows(batch: PackedBatch) -> torch.Tensor:
    """[N] the positions whose next token is trained."""
    return (batch.targets != IGNORE_INDEX).nonzero().squeeze(1)


def _causal_lm(model: nn.Module) -> nn.Module:
    """The `CausalLM` inside a peft model (its adapted layers included), or the model itself."""
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


# Rows of logits per chunk: ~4M fp32 elements (85 rows of SmolLM2's 49k vocabulary), but at least
# 64, since each chunk reads the whole lm_head again (335 MB for Gemma 3's 262k vocabulary: 16-row
# chunks would read it 64 times a 512-token step, against the page faults of a larger buffer).
_LOSS_CHUNK_ELEMENTS = 1 << 22
_LOSS_MIN_ROWS = 64


class _LinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(softcap(hidden @ weight.T), targets) per row [N], a chunk of rows at a time,
    with the gradient w.r.t. `hidden` computed alongside (the frozen weight needs none), so the
    full [N, V] logits never exist. Logits as `CausalLM.compute_logits` makes them: the head in the
    weight's dtype, then fp32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # noqa: ANN001
                softcap: float | None) -> torch.Tensor:
        n = hidden.shape[0]
        rows = min(n, max(_LOSS_MIN_ROWS, _LOSS_CHUNK_ELEMENTS // weight.shape[0]))
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        # One set of [rows, V] buffers for all chunks, every op in place or into them: a fresh
        # buffer of this size costs ~25 ms of page faults here, more than the arithmetic on it.
        low = torch.empty(rows, weight.shape[0], dtype=weight.dtype, device=hidden.device)
        logits = torch.empty(rows, weight.shape[0], dtype=torch.float32, device=hidden.device)
        dcap = torch.empty_like(logits) if softcap is not None else None
        for start in range(0, n, rows):
            m = min(rows, n - start)
            h, t, z, zl = hidden[start:start + m], targets[start:start + m], logits[:m], low[:m]
            torch.matmul(h.to(weight.dtype), weight.t(), out=zl)  # the head in the weight's dtype,
            z.copy_(zl)  # then fp32, as `CausalLM.compute_logits`
            if softcap is not None:
                z.div_(softcap).tanh_().mul_(softcap)
                torch.mul(z, 1.0 / softcap, out=dcap[:m]).square_().neg_().add_(1.0)  # d tanh
            picked = z.gather(1, t[:, None]).squeeze(1)
            peak = z.amax(dim=-1)
            z.sub_(peak[:, None]).exp_()  # from here z holds exp(logits - peak), then the softmax
            sums = z.sum(dim=-1)
            torch.sub(peak + sums.log(), picked, out=losses[start:start + m])
            z.div_(sums[:, None])
            z[torch.arange(m, device=t.device), t] -= 1.0  # minus the one-hot target
            if softcap is not None:
                z.mul_(dcap[:m])
            zl.copy_(z)
            grad[start:start + m] = zl @ weight
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return grad * grad_losses.to(grad.dtype)[:, None], None, None, None
