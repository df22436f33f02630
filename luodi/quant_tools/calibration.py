"""Calibration: what the inputs of each decoder-layer linear look like on real tokens.

Runs the float model over calibration sequences with forward pre-hooks and keeps, per
`nn.Linear` inside `model.model.layers`, the per-input-channel max |x| (SmoothQuant), mean |x|
(AWQ) and a random subsample of input rows (for the per-layer error searches). It knows nothing
of how these statistics are used, nor of tokenizers: sequences arrive as token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from luodi.errors import InvalidParameterError
from luodi.models.reference import full_logits
from luodi.progress import track_if

# Fixed so that two calibrations of one model on the same sequences give the same subsample.
SAMPLE_SEED = 0


@dataclass(frozen=True, slots=True)
class LinearStats:
    absmax: torch.Tensor  # float32 [K] per-input-channel max |x| over all calibration tokens
    mean_abs: torch.Tensor  # float32 [K] per-input-channel mean |x|
    sample: torch.Tensor  # float32 [S, K] a random subsample of input rows (S <= max_samples)


@dataclass(frozen=True, slots=True)
class _Running:
    """Statistics of one input stream so far; a new object per update, never changed in place."""

    absmax: torch.Tensor  # [K]
    sum_abs: torch.Tensor  # [K] float64: millions of tokens may be summed
    count: int
    rows: torch.Tensor  # [S, K] the kept sample
    priorities: torch.Tensor  # [S] their priorities


def _update(state: _Running | None, x: torch.Tensor, priorities: torch.Tensor, max_samples: int) -> _Running:
    """`state` with the rows of x [..., K] added.

    The subsample is bottom-k sampling: every token gets a random priority shared by all linears,
    and each input keeps the rows of the `max_samples` lowest priorities seen so far — a uniform
    sample without replacement, the same tokens for every linear, so a group of linears reading
    one input can be measured on one matrix.
    """
    x = x.reshape(-1, x.shape[-1]).float()  # [T, K]
    abs_x = x.abs()
    absmax, sum_abs = abs_x.amax(dim=0), abs_x.sum(dim=0).double()  # fp32 within a sequence is exact enough
    priorities = priorities.to(x.device)
    if state is not None:
        absmax, sum_abs = torch.maximum(state.absmax, absmax), state.sum_abs + sum_abs
        if state.rows.shape[0] == max_samples:  # only rows that can displace a kept one
            is_candidate = priorities < state.priorities.max()
            x, priorities = x[is_candidate], priorities[is_candidate]
        x, priorities = torch.cat([state.rows, x]), torch.cat([state.priorities, priorities])
    if x.shape[0] > max_samples:
        keep = priorities.topk(max_samples, largest=False).indices.sort().values
        x, priorities = x[keep], priorities[keep]
    count = abs_x.shape[0] + (0 if state is None else state.count)
    return _Running(absmax, sum_abs, count, x.clone(), priorities.clone())


def _finish(state: _Running) -> LinearStats:
    # clone() outside inference mode: the hooks ran under it, and inference tensors cannot later
    # take part in ordinary (no_grad) arithmetic with model parameters.
    mean_abs = (state.sum_abs / state.count).float()
    return LinearStats(absmax=state.absmax.clone(), mean_abs=mean_abs, sample=state.rows.clone())


class _Collector:
    """The forward pre-hooks' shared state: one running state per linear, and the priorities of the
    sequence being run.

    q/k/v (and gate/up) are called one after another on the same tensor from the same previous
    state, so a one-entry memo of the last update lets them share its work and its tensors.
    """

    def __init__(self, names: list[str], max_samples: int) -> None:
        self.max_samples = max_samples
        self.states: dict[str, _Running | None] = dict.fromkeys(names)
        self.priorities = torch.empty(0)  # [T]
        self._last: tuple[_Running | None, torch.Tensor, _Running] | None = None

    def start_sequence(self, priorities: torch.Tensor) -> None:
        self.priorities, self._last = priorities, None

    def update(self, name: str, x: torch.Tensor) -> None:
        state = self.states[name]
        last = self._last
        if last is not None and last[0] is state and last[1] is x:
            self.states[name] = last[2]
            return
        new = _update(state, x, self.priorities, self.max_samples)
        self.states[name], self._last = new, (state, x, new)

    def finish(self) -> dict[str, LinearStats]:
        finished: dict[int, LinearStats] = {}  # shared states stay shared
        for state in self.states.values():
            assert state is not None, "a decoder linear was never called"
            if id(state) not in finished:
                finished[id(state)] = _finish(state)
        return {name: finished[id(state)] for name, state in self.states.items()}


def calibration_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every `nn.Linear` inside the decoder layers, by its `named_modules()` name."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("model.layers.")
    }


def _validate(sequences: list[list[int]], max_samples: int, linears: dict[str, nn.Linear]) -> None:
    if max_samples < 1:
        raise InvalidParameterError(f"max_samples={max_samples} must be at least 1", param="max_samples")
    if not sequences or any(len(seq) == 0 for seq in sequences):
        raise InvalidParameterError(
            "calibration needs at least one non-empty token sequence; pass a few hundred tokens of "
            "representative text", param="sequences",
        )
    if not linears:
        raise InvalidParameterError(
            "the model has no nn.Linear under model.model.layers to calibrate; calibrate the float "
            "model before `prepare_for_inference` packs or fuses its projections", param="model",
        )


def collect_activation_stats(
    model: nn.Module, sequences: list[list[int]], *, max_samples: int = 512, progress: bool = False,
) -> dict[str, LinearStats]:
    """Input statistics of each decoder-layer linear over all `sequences`, keyed by module name."""
    linears = calibration_linears(model)
    _validate(sequences, max_samples, linears)
    collector = _Collector(list(linears), max_samples)
    generator = torch.Generator().manual_seed(SAMPLE_SEED)

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            collector.update(name, args[0])
        return hook

    handles = [linear.register_forward_pre_hook(hook_for(name)) for name, linear in linears.items()]
    try:
        for seq in track_if(sequences, "calibrating", progress):
            collector.start_sequence(torch.rand(len(seq), generator=generator))  # [T]
            full_logits(model, seq)
    finally:
        for handle in handles:
            handle.remove()
    return collector.finish()
