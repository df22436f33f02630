"""Fused CPU ops for inference: the work between a layer's matmuls in one native call each.

Decoding one token on a small model is dominated by per-op overhead, not arithmetic. Measured on
SmolLM2-135M, bf16, one decode token, 2-core Zen 4: between its four matmuls a Llama layer issued
63 top-level ATen ops (~210 counting the ones they call: RMSNorm alone expands to casts, pow,
mean, add, rsqrt and muls) taking ~140 us — as long as the matmuls themselves, which read the
layer's 4.4 MB of weights at the memory-bandwidth wall. The native ops here
(`native/fused_ops.cpp`, compiled at first use into `$LUODI_HOME/build/`) do the same work
in four calls per layer, ~30 us with the Python around them:

- `add_rms_norm`: the residual add and the next RMSNorm (HF Llama or Gemma flavour) in one pass;
- `gated_act`: `act(gate) * up` over the fused gate/up projection (SiLU or tanh-GELU);
- `rope_attend_decode`: per-head q/k norm, RoPE, storing k/v into the paged cache, and attention
  of one query token per sequence over its cached keys (GQA, sliding window).

Instruction-set levels (`luodi.kernels.isa`): the best build at or below the level in force runs.
At avx512 and avx512bf16, `native/fused_ops.cpp` (AVX-512 F/BW/VL/DQ, -march=native); at avx2,
`native/fused_ops_avx2.cpp` (-mavx2 -mfma -mf16c, a real AVX2 binary: the code a Haswell or Zen 2
runs); at generic and neon none (torch ops). Both are compiled with -ffp-contract=off and share their
argument checks (`native/fused_common.h`); the AVX2 build rounds where torch does and uses the same
exp and tanh polynomials, and differs from the AVX-512 one only in summation order (8 lanes instead
of 16), within the same bounds of the reference (tests/kernels/test_fused.py runs every test at
both levels). Its chunk attention always scores keys with its decode op's dot products and sums
P V in decode's order, so it is batch invariant whatever `set_batch_invariant` says (the AVX-512
build's faster GEMM order has no AVX2 counterpart yet).

Each op has a torch reference here — the exact code the models ran before — used when the native
code is unavailable (no build for the level, no compiler: the reason is logged at debug level,
nothing is raised), when autograd is on (`torch.is_grad_enabled()`: training keeps plain torch ops), for
tensors off the CPU, and by the tests as the oracle. Rounding matches the reference op by op (see
the C++ header): fp32 results agree to ~1e-6 relative, bf16/fp16 ones to one ulp where a rounding
boundary falls between two summation orders.

This module knows tensors and the paged cache's flat layout, not models, requests or blocks. Set
`LUODI_FUSED=0` to turn the native ops off (for measuring what they save).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from luodi.kernels import isa
from luodi.kernels.native_build import NativeExtension

log = logging.getLogger(__name__)

# -ffp-contract=off: no FMA where torch multiplies and adds separately (bit-exact RoPE and norms).
EXTENSION = NativeExtension(
    "luodi_fused", "fused_ops.cpp", "fused CPU ops",
    required_cpu_flags=("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    cflags=("-O3", "-march=native", "-fopenmp", "-ffp-contract=off"),
)
# A real AVX2 binary (no -march=native), as lowbit's: the code a Haswell or Zen 2 runs.
AVX2_EXTENSION = NativeExtension(
    "luodi_fused_avx2", "fused_ops_avx2.cpp", "AVX2 fused CPU ops",
    required_cpu_flags=isa.LEVEL_FLAGS["avx2"],
    cflags=("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off"),
)
# Each build and the lowest level it serves, best first: the best that loads at or below the level in
# force (`isa.cpu_isa()`) runs; generic and neon get none.
_BUILDS = (("avx512", EXTENSION), ("avx2", AVX2_EXTENSION))
EXTENSIONS = tuple(extension for _, extension in _BUILDS)  # every build, for `luodi kernels --build-all`
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_NATIVE_DTYPES = frozenset(DTYPES)
GATED_ACTS = {"silu": 0, "gelu_pytorch_tanh": 1}  # activation name -> the native op's code
NATIVE_HEAD_DIMS = (16, 32, 64, 96, 128, 256)  # rope_attend_decode's compiled kernels

_disabled = os.environ.get("LUODI_FUSED", "1") == "0"


_batch_invariant = os.environ.get("LUODI_BATCH_INVARIANT", "1") != "0"


@functools.cache
def _native_or_reason() -> tuple[Any, str, str]:
    """(the extension module, the level of its build, '') or (None, 'generic', why none loads)."""
    reasons = []
    for level, extension in _BUILDS:
        module, reason = extension.load()  # refuses a build above the level in force
        if module is not None:
            module.set_batch_invariant(_batch_invariant)
            return module, level, ""
        reasons.append(f"{extension.what}: {reason}")
    return None, "generic", "; ".join(reasons)


def set_batch_invariant(on: bool) -> None:
    """Prompt-chunk attention scores keys with the decode op's dot products, so a token's attention
    is the same as a decode row or in any chunk (slower: `luodi.kernels.lowbit`). Process-wide."""
    global _batch_invariant
    _batch_invariant = on
    if _native() is not None:
        _native().set_batch_invariant(on)


@functools.cache
def _native() -> Any:  # the extension module, or None
    module, _, reason = _native_or_reason()
    if module is None:
        log.debug("fused native ops unavailable (%s); using torch ops", reason)
    return module


def native_available() -> bool:
    """Whether the native ops can run here (compiles them on the first call)."""
    return _native() is not None


def native_unavailable_reason() -> str:
    """Why `native_available()` is False ('' when it is True)."""
    return _native_or_reason()[2]


def native_level() -> str:
    """The instruction-set level of the build in use: 'avx512' (serving avx512 and avx512bf16), 'avx2',
    or 'generic' (torch ops)."""
    return _native_or_reason()[1]


def native_api() -> int:
    """The address of the native ops' table (`native/kernel_api.h`), for the layer stack. Needs
    `native_available()`."""
    return _native().api()


def enabled_for(x: torch.Tensor) -> bool:
    """Whether the native ops apply to activations like `x`: CPU, a float dtype, no autograd."""
    # Called several times per layer: cheapest tests first (~0.3 us in all).
    return x.is_cpu and x.dtype in _NATIVE_DTYPES and not torch.is_grad_enabled() and not _disabled and (
        _native() is not None
    )


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the torch reference path inside this block (tests compare the two)."""
    global _disabled
    previous, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = previous


# -- RMSNorm with the residual add ----------------------------------------------------------------
def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, is_offset: bool) -> torch.Tensor:
    """HF `LlamaRMSNorm` (weight * normed.to(T)) or `Gemma3RMSNorm` ((1 + w) in fp32): the oracle."""
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    if is_offset:
        return (normed * (1.0 + weight.float())).to(x.dtype)
    return weight * normed.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, *,
    is_offset: bool = False, x_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(h), h) with h = x + residual — or `x` itself when `residual` is None.

    With `x_weight`, x is first normalized with it (Gemma 3's post-attention norm, applied before
    the residual add). `is_offset` picks Gemma's (1 + w) weights for both norms. x, residual:
    [..., N] contiguous; weights [N]. Llama-style weights must have x's dtype.
    """
    is_exact = is_offset or (weight.dtype == x.dtype and (x_weight is None or x_weight.dtype == x.dtype))
    if is_exact and enabled_for(x):
        residual = None if residual is None else residual.contiguous()
        return _native().add_rms_norm(x.contiguous(), residual, weight, eps, is_offset, x_weight, eps)
    if x_weight is not None:
        x = rms_norm_reference(x, x_weight, eps, is_offset)
    h = x if residual is None else x + residual
    return rms_norm_reference(h, weight, eps, is_offset), h


# -- gated activation -------------------------------------------------------------------------------
def gated_act_reference(gate_up: torch.Tensor, act: str) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    if act == "silu":
        return F.silu(gate) * up
    return F.gelu(gate, approximate="tanh") * up


def gated_act(gate_up: torch.Tensor, act: str) -> torch.Tensor:
    """act(gate) * up for `gate_up` [..., 2I] = cat(gate, up); act is a key of GATED_ACTS."""
    if enabled_for(gate_up):
        return _native().gated_act(gate_up.contiguous(), GATED_ACTS[act])
    return gated_act_reference(gate_up, act)


# -- rope + paged KV store + decode attention --------------------------------------------------------
def rope_attend_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, kv_slots: torch.Tensor,
    seq_lens: torch.Tensor, *, num_heads: int, scale: float, sliding_window: int | None = None,
    q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6, norm_is_offset: bool = False,
) -> torch.Tensor:
    """One new token per sequence: q/k head norms, RoPE, k/v into the cache, attention; [B, H*D].

    q [B, H*D], k and v [B, Hkv*D] (rows may be views into a fused qkv output); cos, sin
    contiguous [B, D] or [B, 1, D] in q's dtype; caches fp32 [Hkv, S, D]; token b goes to slot `slot_mapping[b]`
    and attends to slots `kv_slots[b, :seq_lens[b]]` — the last `sliding_window` of them when set.
    Native when `enabled_for(q)`, else the torch reference.
    """
    num_kv_heads, head_dim = k_cache.shape[0], k_cache.shape[2]
    if enabled_for(q) and k_cache.dtype == torch.float32 and head_dim in NATIVE_HEAD_DIMS:
        return _native().rope_attend_decode(
            q, k, v, cos, sin, k_cache, v_cache, slot_mapping, kv_slots, seq_lens, num_heads, num_kv_heads,
            scale, sliding_window or 0, q_norm_weight, k_norm_weight, norm_eps, norm_is_offset,
        )
    return rope_attend_decode_reference(
        q, k, v, cos, sin, k_cache, v_cache, slot_mapping, kv_slots, seq_lens, num_heads=num_heads,
        scale=scale, sliding_window=sliding_window, q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight,
        norm_eps=norm_eps, norm_is_offset=norm_is_offset,
    )


def rope_attend_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, kv_slots: torch.Tensor,
    bounds: torch.Tensor, context_lens: torch.Tensor, *, num_heads: int, scale: float,
    sliding_window: int | None = None, q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None, norm_eps: float = 1e-6, norm_is_offset: bool = False,
) -> torch.Tensor:
    """Prompt chunks: q/k head norms, RoPE, k/v into the cache, causal attention; [T, H*D].

    Rows [bounds[c], bounds[c + 1]) are the new tokens of one sequence after `context_lens[c]`
    cached ones, at slots `slot_mapping`; each attends to `kv_slots[c, :position + 1]` (the last
    `sliding_window` of them when set). Shapes otherwise as `rope_attend_decode`. Native only: the
    caller checks `enabled_for(q)` and keeps its torch path otherwise.
    """
    num_kv_heads = k_cache.shape[0]
    return _native().rope_attend_chunks(
        q, k, v, cos, sin, k_cache, v_cache, slot_mapping, kv_slots, bounds, context_lens, num_heads,
        num_kv_heads, scale, sliding_window or 0, q_norm_weight, k_norm_weight, norm_eps, norm_is_offset,
    )


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D], cos/sin [T, 1, D]: HF `apply_rotary_pos_emb` with `rotate_half` (torch ops; the
    models' RoPE for prompt chunks and the native decode op's oracle)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_attend_decode_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, kv_slots: torch.Tensor,
    seq_lens: torch.Tensor, *, num_heads: int, scale: float, sliding_window: int | None = None,
    q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6, norm_is_offset: bool = False,
) -> torch.Tensor:
    """The same in torch ops, as `PagedAttention.attend`'s decode path computes it: the oracle."""
    b, hkv, d = q.shape[0], k_cache.shape[0], k_cache.shape[2]
    q, k, v = q.reshape(b, num_heads, d), k.reshape(b, hkv, d), v.reshape(b, hkv, d)
    if q_norm_weight is not None and k_norm_weight is not None:
        q = rms_norm_reference(q, q_norm_weight, norm_eps, norm_is_offset)
        k = rms_norm_reference(k, k_norm_weight, norm_eps, norm_is_offset)
    cos, sin = cos.reshape(b, 1, d), sin.reshape(b, 1, d)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_cache.index_copy_(1, slot_mapping, k.transpose(0, 1).to(k_cache.dtype))
    v_cache.index_copy_(1, slot_mapping, v.transpose(0, 1).to(v_cache.dtype))
    keys = k_cache[:, kv_slots].transpose(0, 1)  # [B, Hkv, K, D]
    values = v_cache[:, kv_slots].transpose(0, 1)
    positions = torch.arange(kv_slots.shape[1], device=q.device)
    mask = positions[None, :] < seq_lens[:, None]  # [B, K]
    if sliding_window is not None:
        mask &= positions[None, :] >= seq_lens[:, None] - sliding_window
    queries = q.to(k_cache.dtype).view(b, hkv, num_heads // hkv, d)  # query heads grouped by KV head
    scores = torch.matmul(queries, keys.transpose(-1, -2)).float() * scale  # [B, Hkv, G, K]
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    return torch.matmul(probs, values).to(q.dtype).reshape(b, num_heads * d)
