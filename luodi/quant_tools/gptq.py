"""GPTQ for INT4: round a weight column by column, folding each column's error into the rest.

Owns the input second-moment matrices of a model's linear layers (`collect_input_grams`) and
the error-feedback rounding itself (`gptq_int4`). Round-to-nearest minimizes each weight's own
error; a layer's output error is `(W - Ŵ) H (W - Ŵ)ᵀ` with H = E[x xᵀ] over its inputs, and when
inputs are correlated (they are, after a norm) the error of one rounded column can be cancelled
in part by moving the columns not yet rounded. GPTQ (Frantar et al. 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers") does this in one pass with
the upper Cholesky factor of H⁻¹; each group's grid is chosen from the weights as updated when the
pass reaches the group, with `luodi.quant.weight_only`'s grid search, so the stored form is the
one `quantize_int4` writes (fp16, or on a lattice of 8-bit codes) and every kernel reads.

On gemma3-270m int4 g32 (held-out text, fp32) round-to-nearest lost +10.8 % perplexity per byte
and GPTQ +4.0 %: decoder layers +6.1 % -> +2.8 %, the tied vocabulary table +4.6 % -> +1.2 %.

Must not know: files, the saved format, which modules a scheme quantizes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from luodi.errors import InvalidParameterError
from luodi.models.reference import full_logits
from luodi.progress import track_if
from luodi.quant.weight_only import (
    INT4_LEVELS,
    GridSteps,
    as_float_matrix,
    check_group_size,
    quantize_int4_groups,
)

# H += DAMPING · mean(diag H) · I: keeps H invertible when calibration tokens span fewer
# directions than the layer has inputs (the GPTQ paper's 1 %).
DAMPING = 0.01
# Columns rounded between two whole-matrix updates (the paper's lazy batch); a multiple of every
# group size, so a group never straddles two blocks.
BLOCK_COLUMNS = 128
# Gram matrices held at once while calibrating; more linears than fit take more passes (a 1.1B
# Llama needs ~4.6 GB for all of them, a 3B ~11 GB), each stopping after its last linear.
GRAM_BUDGET_BYTES = 4 << 30


class _PassDone(Exception):
    """Raised by a hook once every linear of a pass has seen the sequence: the rest of the forward
    would be wasted work."""


def collect_input_grams(
    model: nn.Module, names: list[str], sequences: list[list[int]], *, progress: bool = False,
) -> dict[str, Tensor]:
    """H = mean over calibration tokens of x xᵀ (fp32 [K, K]) for the input of each named linear.

    Linears that read the same tensor (q/k/v, gate/up) share one matrix. Runs the model once per
    `GRAM_BUDGET_BYTES` of matrices, each pass only as far as its last linear.
    """
    if not sequences or any(len(seq) == 0 for seq in sequences):
        raise InvalidParameterError("GPTQ needs at least one non-empty calibration sequence", param="sequences")
    grams: dict[str, Tensor] = {}
    for batch in _passes(model, names):
        grams.update(_collect_pass(model, batch, sequences, progress))
    return grams


def _passes(model: nn.Module, names: list[str]) -> list[list[str]]:
    """`names` cut into consecutive runs whose Gram matrices fit the budget (at least one each)."""
    passes: list[list[str]] = [[]]
    used = 0
    for name in names:
        size = model.get_submodule(name).in_features ** 2 * 4
        if passes[-1] and used + size > GRAM_BUDGET_BYTES:
            passes.append([])
            used = 0
        passes[-1].append(name)
        used += size
    return [p for p in passes if p]


def _collect_pass(
    model: nn.Module, names: list[str], sequences: list[list[int]], progress: bool,
) -> dict[str, Tensor]:
    sums: dict[str, Tensor] = {}
    owner: dict[str, str] = {}  # linear -> the linear whose sum holds its input's matrix
    last: list[tuple[Tensor, str]] = []  # the previous hook's input: q/k/v see the same tensor object
    seen: set[str] = set()  # the linears that have seen the current sequence
    num_tokens = 0

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            seen.add(name)
            if last and last[0][0] is x:
                owner.setdefault(name, last[0][1])
            else:
                owner.setdefault(name, name)
                rows = x.reshape(-1, x.shape[-1]).float()  # [T, K]
                sums[name] = sums[name].addmm_(rows.T, rows) if name in sums else rows.T @ rows
                last[:] = [(x, name)]
            if len(seen) == len(names):
                raise _PassDone
        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in names]
    try:
        for seq in track_if(sequences, "GPTQ statistics", progress):
            last.clear()
            seen.clear()
            try:
                full_logits(model, seq)
            except _PassDone:
                pass
            num_tokens += len(seq)
    finally:
        for handle in handles:
            handle.remove()
    # clone(): the hooks ran in inference mode; the result must take part in ordinary arithmetic.
    return {name: (sums[owner[name]] / num_tokens).clone() for name in names}


def gptq_int4(
    weight: Tensor, gram: Tensor, group_size: int, steps: GridSteps | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """INT4 with error feedback: (q uint8 0..15 [N, K], scales [N, G], mins [N, G]).

    The same form as `quantize_int4(weight, group_size, steps)`: fp16 grids, or fp32 ones on the
    lattice of `steps`. With a diagonal `gram` the two are identical.
    """
    w = as_float_matrix(weight).clone()
    n, k = w.shape
    check_group_size(n, k, group_size)
    if gram.shape != (k, k):
        raise InvalidParameterError(
            f"GPTQ needs a [{k}, {k}] input Gram matrix for a [{n}, {k}] weight, got {tuple(gram.shape)}"
        )
    gram = gram.to(w.device, torch.float32)
    w[:, torch.diagonal(gram) == 0] = 0.0  # inputs never seen: any weight there is as good, and 0 is exact
    hinv = _inverse_cholesky(gram)  # upper [K, K]
    # Column by column, on the transpose: each column of w a contiguous row (1.5-1.8x faster).
    wt = w.T.contiguous()  # [K, N]
    qt = torch.empty(k, n, dtype=torch.uint8, device=w.device)
    grid_dtype = torch.float16 if steps is None else torch.float32
    scales = torch.empty(n, k // group_size, dtype=grid_dtype, device=w.device)
    mins = torch.empty_like(scales)
    for start in range(0, k, BLOCK_COLUMNS):
        end = min(start + BLOCK_COLUMNS, k)
        errors = _round_block(wt, hinv, start, end, group_size, steps, (qt, scales, mins))  # [end - start, N]
        wt[end:] -= hinv[start:end, end:].T @ errors
    return qt.T.contiguous(), scales, mins


def _inverse_cholesky(gram: Tensor) -> Tensor:
    """Upper Cholesky factor of (H + damping)⁻¹, an input never seen (zero diagonal) counted as unit."""
    h = gram.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(DAMPING * torch.diagonal(h).mean())
    try:
        factor = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError as exc:
        raise InvalidParameterError(
            f"GPTQ: a layer's input Gram matrix [{h.shape[0]}, {h.shape[0]}] is not positive definite ({exc}); "
            "calibrate on more text, or quantize with --method rtn"
        ) from exc
    return factor


def _round_block(
    wt: Tensor, hinv: Tensor, start: int, end: int, group_size: int, steps: GridSteps | None,
    out: tuple[Tensor, Tensor, Tensor],
) -> Tensor:
    """Round columns start..end of w (rows of its transpose `wt`) in order, updating the block's
    later columns; the scaled errors [end - start, N]."""
    qt_out, scales_out, mins_out = out
    block = wt[start:end]  # a view: the updates land in wt
    errors = torch.empty_like(block)
    pivots = torch.diagonal(hinv)[start:end].tolist()
    shape = (wt.shape[1], wt.shape[0])
    for i in range(end - start):
        column = start + i
        if column % group_size == 0:
            group = column // group_size
            _, scales, mins = quantize_int4_groups(block[i:i + group_size].T.unsqueeze(1), shape, steps)
            scales_out[:, group], mins_out[:, group] = scales[:, 0], mins[:, 0]
            scale, low = scales[:, 0].float(), mins[:, 0].float()
        q = torch.round((block[i] - low) / scale).clamp_(0, INT4_LEVELS)
        qt_out[column] = q.to(torch.uint8)
        torch.div(block[i] - (q * scale + low), pivots[i], out=errors[i])
        block[i + 1:].addr_(hinv[column, column + 1:end], errors[i], alpha=-1)
    return errors
