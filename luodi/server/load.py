"""What a replica tells a gateway about its load and speed: the figures `/health` carries.

Owns the step-cost model a gateway predicts latency with. A step's seconds are fitted, over the
engine's recent steps, as `base + per_row × decode rows + per_token × prefill tokens`: on a CPU
the weights are read once per step whatever the batch (the base), and each decode row and each
prefill token adds its compute. A request joining a batch of b then sees a time per output token
of about `base + per_row × (b + 1)` and a first token after `prompt tokens × per_token`. Until
enough varied steps are seen, the fit falls back to the plain means of what was seen.

Must not know routes or the protocol: reads the engine's scheduler, KV pool and step history.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from luodi.engine.engine import LLMEngine

_MIN_STEPS = 8  # fewer recent steps than this: not enough to fit three costs
_RECENT_STEPS = 512


@dataclass(frozen=True, slots=True)
class StepCost:
    base_s: float  # a step's fixed cost: reading the weights
    per_row_s: float  # each decode row
    per_token_s: float  # each prefill token

    def tpot(self, batch: int) -> float:
        return self.base_s + self.per_row_s * batch


def fit_step_cost(history: list[tuple[int, int, float]]) -> StepCost | None:
    """Least squares over (prefill tokens, decode rows, seconds) steps; None with too few steps."""
    if len(history) < _MIN_STEPS:
        return None
    data = np.asarray(history[-_RECENT_STEPS:], dtype=np.float64)
    prefill, decode, seconds = data[:, 0], data[:, 1], data[:, 2]
    design = np.stack([np.ones_like(seconds), decode, prefill], axis=1)
    coef, *_ = np.linalg.lstsq(design, seconds, rcond=None)
    base, per_row, per_token = (float(max(c, 0.0)) for c in coef)
    if per_token == 0.0 and prefill.sum() > 0:  # all steps alike: charge prefill its mean share
        per_token = float(seconds[prefill > 0].sum() / prefill.sum())
    if base == 0.0 and per_row == 0.0 and decode.sum() > 0:
        per_row = float(seconds[decode > 0].mean() / max(decode[decode > 0].mean(), 1.0))
    return StepCost(base, per_row, per_token)


def load_report(engine: LLMEngine, num_admitted: int, hardware: str, started_at: float) -> dict:
    """The figures a gateway routes by (JSON-ready)."""
    scheduler, kv = engine.scheduler, engine.kv
    history = engine.stats.history  # a deque of up to 4096 steps: copy only the recent ones
    cost = fit_step_cost(list(itertools.islice(history, max(len(history) - _RECENT_STEPS, 0), None)))
    return {
        "pid": os.getpid(),
        "node": os.environ.get("LUODI_NODE_ID") or socket.gethostname(),  # a Ray node's id, else the host
        "started_at": started_at,
        "uptime_s": round(time.time() - started_at, 3),
        "hardware": hardware,
        "admitted": num_admitted,
        "waiting": len(scheduler.waiting),
        "running": len(scheduler.running),
        "max_num_seqs": engine.config.max_num_seqs,
        "kv_blocks_total": kv.num_blocks,
        "kv_blocks_free": kv.num_free_blocks,
        "block_size": engine.config.block_size,
        "prefix_cache_hit_rate": kv.stats.hit_rate,
        "step_cost": None if cost is None else {
            "base_s": cost.base_s, "per_row_s": cost.per_row_s, "per_token_s": cost.per_token_s},
    }
