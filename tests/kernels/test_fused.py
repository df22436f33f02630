"""Fused native CPU ops (`luodi.kernels.fused`) against the torch code they replace.

The native ops round to the model dtype T exactly where torch does, so they differ from the torch
reference only where fp32 arithmetic is ordered differently or approximated differently. With
u = 2^-24 (fp32 unit roundoff) and eps_T = torch.finfo(T).eps (one ulp of T at 1.0):

- RMSNorm: the sum of n squares is accumulated in L lanes then a tree (L = 16 in the AVX-512 build,
  8 in the AVX2 one); this and torch's order are each within (n/L + log2 L) u of the exact sum
  (positive terms), so 1/rms differs by at most delta = (n/L + log2 L + 2) u relatively. The
  normalized value differs by delta before its rounding to T, hence by at most one ulp of T after
  it; scaling by w and rounding again adds one ulp of the output:
  |native - ref| <= (delta + eps_T) |w * normed| + eps_T |ref|.
- Gated activation: exp and tanh are within ~2 ulp of torch's (Sleef) ones, so act(g) differs by
  4 u |act| (+ 2 u |g| for tanh-GELU, whose 1 + tanh(y) cancels for y << 0 and keeps the
  absolute error of tanh, ~u); that moves round_T(act) by at most one ulp, times |up|, plus the
  final rounding: |native - ref| <= (4 u |act| + 2 u |g| + eps_T |act|) |up| + eps_T |ref|.
- RoPE and the cache write are op-for-op identical: bit-equal caches (with head norms, k moves by
  the RMSNorm bound). Attention: each score is a D-term fp32 dot product in a different order,
  off by at most D u sum|q k| scale; softmax weights then move by twice that relatively, exp by a
  few u, and the weighted sum of K values by K u more:
  |native - ref| <= (2 ds + (K + 8) u) max|v| + eps_T |ref|.
Whole models: fp32 logits of the fused and torch paths agree to 1e-4 and greedy tokens are equal.

Every native test runs once per build, forcing its instruction-set level (`level`: avx512bf16 runs
the AVX-512 build, avx2 the AVX2 one), against the same reference and bounds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.kernels import fused, isa, lowbit, native_build
from luodi.kernels.attention import PagedAttention, SequenceSlice, build_metadata
from luodi.models.config import ModelConfig
from luodi.models.gemma3 import Gemma3ForCausalLM
from luodi.models.inference import prepare_for_inference
from luodi.models.llama import LlamaForCausalLM
from luodi.models.qwen3 import Qwen3ForCausalLM

U = 2.0**-24
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LEVELS = {"avx512bf16": "avx512", "avx2": "avx2"}  # forced level -> the build that serves it
LANES = {"avx512": 16, "avx2": 8}  # fp32 lanes of each build's sums


def _reload_kernels() -> None:
    for cached in (fused._native_or_reason, fused._native, lowbit._native_or_reason):
        cached.cache_clear()


@pytest.fixture(params=list(LEVELS))
def level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Run the test with the fused ops (and low-bit kernels) of this forced level, then restore the default."""
    monkeypatch.setenv(isa.ENV_VAR, request.param)
    _reload_kernels()
    if not fused.native_available() or fused.native_level() != LEVELS[request.param]:
        pytest.skip(f"no {LEVELS[request.param]} fused build here: {fused.native_unavailable_reason()}")
    yield LEVELS[request.param]
    monkeypatch.undo()
    _reload_kernels()


needs_native = pytest.mark.usefixtures("level")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _assert_within(native: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> None:
    excess = (native.float() - ref.float()).abs() - bound
    assert native.dtype == ref.dtype and native.shape == ref.shape
    assert float(excess.max()) <= 0, f"worst excess over the derived bound: {float(excess.max()):.3g}"


# -- add_rms_norm -------------------------------------------------------------------------------------
def _norm_bound(h: torch.Tensor, weight: torch.Tensor, ref: torch.Tensor, is_offset: bool, eps: float) -> torch.Tensor:
    n, lanes = h.shape[-1], LANES[fused.native_level()]
    delta = (n / lanes + math.log2(lanes) + 2) * U
    normed = F.rms_norm(h.float(), (n,), eps=eps)
    scale = 1.0 + weight.float() if is_offset else weight.float()
    return (delta + _eps(h.dtype)) * (scale * normed).abs() + _eps(h.dtype) * ref.float().abs()


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("has_residual", [False, True])
@pytest.mark.parametrize("rows", [7, 600])  # a decode batch; a prompt, split across threads
def test_add_rms_norm_matches_torch(dtype, is_offset, has_residual, rows):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(rows, 576, generator=g) * 3).to(dtype)
    residual = torch.randn(rows, 576, generator=g).to(dtype) if has_residual else None
    weight = (torch.randn(576, generator=g) * 0.2 + (0.0 if is_offset else 1.0)).to(dtype)
    normed, h = fused.add_rms_norm(x, residual, weight, 1e-5, is_offset=is_offset)
    with fused.disabled():
        ref_normed, ref_h = fused.add_rms_norm(x, residual, weight, 1e-5, is_offset=is_offset)
    assert torch.equal(h, ref_h)  # one T + T -> T rounding, done alike
    _assert_within(normed, ref_normed, _norm_bound(ref_h, weight, ref_normed, is_offset, 1e-5))


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemma_post_norm_then_add_then_norm(dtype):
    g = torch.Generator().manual_seed(2)
    x, residual = torch.randn(3, 640, generator=g).to(dtype), torch.randn(3, 640, generator=g).to(dtype)
    w_post, w_pre = (torch.randn(640, generator=g) * 0.3).to(dtype), (torch.randn(640, generator=g) * 0.3).to(dtype)
    normed, h = fused.add_rms_norm(x, residual, w_pre, 1e-6, is_offset=True, x_weight=w_post)
    post = fused.rms_norm_reference(x, w_post, 1e-6, True)
    # h = round_T(post(x) + residual): post(x) within the norm bound, one more rounding of h.
    h_bound = _norm_bound(x, w_post, post, True, 1e-6) + _eps(dtype) * (post.float() + residual.float()).abs()
    _assert_within(h, post + residual, h_bound)
    ref = fused.rms_norm_reference(h, w_pre, 1e-6, True)  # the second norm, from the native h
    _assert_within(normed, ref, _norm_bound(h, w_pre, ref, True, 1e-6))


def test_add_rms_norm_reference_is_the_hf_modules():
    from luodi.models.layers import GemmaRMSNorm, RMSNorm

    x, residual = torch.randn(4, 32, dtype=torch.bfloat16), torch.randn(4, 32, dtype=torch.bfloat16)
    for norm in (RMSNorm(32, 1e-6).to(torch.bfloat16), GemmaRMSNorm(32, 1e-6).to(torch.bfloat16)):
        torch.nn.init.normal_(norm.weight)
        with fused.disabled():
            normed, h = fused.add_rms_norm(x, residual, norm.weight, 1e-6, is_offset=norm.is_offset)
        assert torch.equal(h, x + residual) and torch.equal(normed, norm(x + residual))


# -- gated activation -----------------------------------------------------------------------------------
@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", list(fused.GATED_ACTS))
@pytest.mark.parametrize("rows", [5, 200])  # a decode batch; a prompt, split across threads
def test_gated_act_matches_torch(dtype, act, rows):
    g = torch.Generator().manual_seed(3)
    gate_up = (torch.randn(rows, 2 * 1000, generator=g) * 4).to(dtype)  # width not a multiple of 16
    out = fused.gated_act(gate_up, act)
    ref = fused.gated_act_reference(gate_up, act)
    gate, up = (t.float() for t in gate_up.chunk(2, dim=-1))
    exact = F.silu(gate) if act == "silu" else F.gelu(gate, approximate="tanh")
    bound = (4 * U * exact.abs() + 2 * U * gate.abs() + _eps(dtype) * exact.abs()) * up.abs()
    _assert_within(out, ref, bound + _eps(dtype) * ref.float().abs())


# -- rope + paged cache + decode attention ---------------------------------------------------------------
def _decode_batch(lengths: list[int], block_size: int, num_blocks: int, seed: int):
    """Sequences of the given lengths (last token new) on shuffled blocks, as the engine builds them."""
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    seqs = []
    for length in lengths:
        count = -(-length // block_size)
        seqs.append(SequenceSlice(length - 1, 1, tuple(perm[:count])))
        perm = perm[count:]
    return build_metadata(seqs, block_size, torch.device("cpu"), pad_slot=num_blocks * block_size)


def _rope(positions: torch.Tensor, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    from luodi.models.layers import RotaryEmbedding

    return RotaryEmbedding(d, 10000.0)(positions, dtype)  # [T, 1, D] each


CASES = {  # heads, kv heads, head dim, lengths, window, head norms
    "gqa": (9, 3, 64, [5, 17, 40, 1], None, None),
    "sliding-window": (4, 1, 32, [3, 12, 30], 8, None),
    "qwen3-norms": (4, 2, 64, [20, 7], None, "llama"),
    "gemma-norms-window": (4, 1, 256, [9, 25], 16, "gemma"),
    "long-batch-threads": (8, 2, 128, [600, 301, 450, 17, 599, 100, 256, 1], None, None),  # > 1 MFLOP/task
}


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_rope_attend_decode_matches_paged_attention(dtype, case):
    h, hkv, d, lengths, window, norms = CASES[case]
    block_size, num_blocks = 4, sum(-(-n // 4) for n in lengths) + 8
    meta = _decode_batch(lengths, block_size, num_blocks, seed=len(case))
    g = torch.Generator().manual_seed(4)
    caches = [torch.randn(hkv, (num_blocks + 1) * block_size, d, generator=g) for _ in range(2)]
    b = len(lengths)
    qkv = torch.randn(b, (h + 2 * hkv) * d, generator=g).to(dtype)
    q, k, v = qkv.split([h * d, hkv * d, hkv * d], dim=-1)  # strided views, as in the model
    cos, sin = _rope(meta.seq_lens - 1, d, dtype)
    kwargs = {}
    if norms is not None:
        offset = norms == "gemma"
        kwargs = dict(q_norm_weight=(torch.randn(d, generator=g) * 0.2 + (0.0 if offset else 1.0)).to(dtype),
                      k_norm_weight=(torch.randn(d, generator=g) * 0.2 + (0.0 if offset else 1.0)).to(dtype),
                      norm_eps=1e-6, norm_is_offset=offset)
    native_caches = [c.clone() for c in caches]
    out = PagedAttention(native_caches[:1], native_caches[1:], meta).attend_rotary(
        0, q, k, v, cos, sin, scale=d**-0.5, sliding_window=window, **kwargs)
    assert out is not None and out.shape == (b, h * d)
    ref_caches = [c.clone() for c in caches]
    ref = _unfused_attention(q, k, v, cos, sin, ref_caches, meta, d, window, kwargs)
    assert torch.equal(native_caches[1], ref_caches[1])  # v stored as is
    if norms is None or dtype != torch.float32:
        assert torch.equal(native_caches[0], ref_caches[0])  # k: same roundings in the same order
    else:
        lanes = LANES[fused.native_level()]
        torch.testing.assert_close(native_caches[0], ref_caches[0], rtol=(d / lanes + 8) * U * 4, atol=1e-6)
    qf = _unfused_queries(q, cos, sin, d, kwargs).float()  # [B, H, D], rotated
    keys = ref_caches[0][:, meta.kv_slots].transpose(0, 1)  # [B, Hkv, K, D]
    qk = (qf.view(b, hkv, h // hkv, 1, d).abs() * keys[:, :, None].abs()).sum(-1)  # [B, Hkv, G, K]
    ds = d * U * float(qk.max()) * d**-0.5
    bound = (2 * ds + (meta.kv_slots.shape[1] + 8) * U) * float(ref_caches[1].abs().max())
    _assert_within(out, ref, bound + _eps(dtype) * ref.float().abs())


def _unfused_queries(q, cos, sin, d, kwargs):
    from luodi.models.layers import apply_rope

    q = q.reshape(q.shape[0], -1, d)
    if kwargs:
        q = fused.rms_norm_reference(q, kwargs["q_norm_weight"], 1e-6, kwargs["norm_is_offset"])
    return apply_rope(q, cos, sin)


def _unfused_attention(q, k, v, cos, sin, caches, meta, d, window, kwargs):
    """What the models ran before: head norms, `apply_rope`, then `PagedAttention.attend`."""
    from luodi.models.layers import apply_rope

    t = q.shape[0]
    k = k.reshape(t, -1, d)
    if kwargs:
        k = fused.rms_norm_reference(k, kwargs["k_norm_weight"], 1e-6, kwargs["norm_is_offset"])
    queries, keys = _unfused_queries(q, cos, sin, d, kwargs), apply_rope(k, cos, sin)
    out = PagedAttention(caches[:1], caches[1:], meta).attend(
        0, queries, keys, v.reshape(t, -1, d), scale=d**-0.5, sliding_window=window)
    return out.reshape(t, -1)


def test_autograd_is_left_to_the_unfused_path():
    meta = build_metadata([SequenceSlice(0, 3, (0,))], 4, torch.device("cpu"))
    caches = [torch.zeros(1, 8, 16)]
    q = torch.randn(3, 32, requires_grad=True)
    cos, sin = _rope(torch.arange(3), 16, torch.float32)
    with torch.enable_grad():
        assert PagedAttention(caches, caches, meta).attend_rotary(0, q, q[:, :16], q[:, :16], cos, sin, scale=0.25) is None


LONG = 70  # more than two 32-key score blocks and several 12-row tiles
MIXED_STEPS = {  # (cached tokens, new tokens) per sequence of one step
    "few-new-tokens-after-a-cached-prefix": [(45, 7)],
    "decodes-beside-a-long-prompt-chunk": [(17, 1), (0, LONG), (5, 1), (33, 12)],
    "continued-long-chunk-and-short-prompt": [(20, LONG), (0, 9), (9, 1)],
    "long-context": [(300, 40), (250, 1)],
}
HEADS = {  # heads, kv heads, head dim, window, head norms
    "gqa": (9, 3, 64, None, None),
    "gemma-norms-window": (4, 1, 256, 16, "gemma"),
}


@needs_native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("step", list(MIXED_STEPS))
def test_mixed_step_matches_exact_attention(dtype, heads, step):
    """Decode rows and prompt chunks of other lengths in one native step: every token's output must
    be exact attention (fp64) over its own sequence up to itself."""
    h, hkv, d, window, norms = HEADS[heads]
    parts = MIXED_STEPS[step]
    block_size = 4
    num_blocks = sum(-(-(c + n) // block_size) for c, n in parts) + 4
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(7)).tolist()
    seqs = []
    for cached, new in parts:
        count = -(-(cached + new) // block_size)
        seqs.append(SequenceSlice(cached, new, tuple(perm[:count])))
        perm = perm[count:]
    meta = build_metadata(seqs, block_size, torch.device("cpu"), pad_slot=num_blocks * block_size)
    g = torch.Generator().manual_seed(5)
    caches = [torch.randn(hkv, (num_blocks + 1) * block_size, d, generator=g) for _ in range(2)]
    t = sum(n for _, n in parts)
    q, k, v = torch.randn(t, (h + 2 * hkv) * d, generator=g).to(dtype).split([h * d, hkv * d, hkv * d], dim=-1)
    positions = torch.cat([torch.arange(c, c + n) for c, n in parts])
    cos, sin = _rope(positions, d, dtype)
    kwargs = {}
    if norms is not None:
        kwargs = dict(q_norm_weight=(torch.randn(d, generator=g) * 0.2).to(dtype),
                      k_norm_weight=(torch.randn(d, generator=g) * 0.2).to(dtype), norm_eps=1e-6, norm_is_offset=True)
    out = PagedAttention(caches[:1], caches[1:], meta).attend_rotary(
        0, q, k, v, cos, sin, scale=d**-0.5, sliding_window=window, **kwargs)
    assert out is not None and out.shape == (t, h * d)

    queries = _unfused_queries(q, cos, sin, d, kwargs).double()  # [T, H, D]
    keys, values = caches[0].double(), caches[1].double()  # written by the step itself
    expected = torch.empty(t, h, d, dtype=torch.float64)
    row = 0
    for seq in seqs:
        slots = torch.tensor([b * block_size + i for b in seq.block_ids for i in range(block_size)])
        for i in range(seq.num_query):
            length = seq.num_context + i + 1
            visible = slots[max(0, length - window) if window else 0 : length]
            kk = keys[:, visible].repeat_interleave(h // hkv, dim=0)  # [H, n, D]
            vv = values[:, visible].repeat_interleave(h // hkv, dim=0)
            probs = torch.softmax((queries[row, :, None, :] * kk).sum(-1) * d**-0.5, dim=-1)  # [H, n]
            expected[row] = (probs[..., None] * vv).sum(1)
            row += 1
    # the stored keys are the rotated ones, as the torch path rotates them (a head norm's other sum
    # order may move a normed value by one ulp of T before RoPE: eps_T of the largest key); the
    # output is rounded to T once, after fp32 scores, softmax and sums (a few eps_T of max|v|)
    stored_k = fused.apply_rope(
        (fused.rms_norm_reference(k.reshape(t, hkv, d), kwargs["k_norm_weight"], 1e-6, True) if kwargs
         else k.reshape(t, hkv, d)), cos, sin)
    torch.testing.assert_close(keys[:, meta.slot_mapping].transpose(0, 1), stored_k.double(),
                               rtol=2 * _eps(dtype), atol=_eps(dtype) * float(stored_k.abs().max()))
    tolerance = 8 * _eps(dtype) * float(values.abs().max())
    torch.testing.assert_close(out.double().view(t, h, d), expected, rtol=0, atol=tolerance)


@pytest.fixture
def batch_invariant():
    before = fused._batch_invariant
    fused.set_batch_invariant(True)
    yield
    fused.set_batch_invariant(before)


@needs_native
@pytest.mark.usefixtures("batch_invariant")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("cached, new", [(0, 30), (45, 7), (9, 70)])
def test_chunk_rows_equal_decode_rows_bit_for_bit(dtype, heads, cached, new):
    """Batch invariance: a prompt chunk's row attends exactly as the decode op does for that token,
    alone or beside other sequences."""
    h, hkv, d, window, norms = HEADS[heads]
    g = torch.Generator().manual_seed(cached + new)
    num_slots = 128
    kv_slots = torch.randperm(num_slots, generator=g)[None, : cached + new]  # [1, K]: one sequence
    caches = [torch.randn(hkv, num_slots, d, generator=g) for _ in range(2)]
    q, k, v = torch.randn(new, (h + 2 * hkv) * d, generator=g).to(dtype).split([h * d, hkv * d, hkv * d], dim=-1)
    cos, sin = _rope(torch.arange(cached, cached + new), d, dtype)
    kwargs = dict(num_heads=h, scale=d**-0.5, sliding_window=window)
    if norms is not None:
        kwargs.update(q_norm_weight=(torch.randn(d, generator=g) * 0.2).to(dtype),
                      k_norm_weight=(torch.randn(d, generator=g) * 0.2).to(dtype), norm_is_offset=True)
    slots = kv_slots[0, cached:]
    chunk = fused.rope_attend_chunks(q, k, v, cos, sin, *caches, slots, kv_slots, torch.tensor([0, new]),
                                     torch.tensor([cached]), **kwargs)
    # each row as a decode row, in a batch with a copy of the last row's sequence beside it
    rows = torch.arange(new)
    pair = torch.stack([rows, torch.full_like(rows, new - 1)], dim=1)  # [new, 2]
    for i, j in pair.tolist():
        decode = fused.rope_attend_decode(
            q[[i, j]], k[[i, j]], v[[i, j]], cos[[i, j]].contiguous(), sin[[i, j]].contiguous(), *caches,
            slots[[i, j]], kv_slots.expand(2, -1).contiguous(), torch.tensor([cached + i + 1, cached + new]), **kwargs)
        assert torch.equal(decode[0], chunk[i]), f"row {i} differs"
        assert torch.equal(decode[1], chunk[new - 1])


@needs_native
def test_bad_slot_raises_instead_of_writing_out_of_bounds():
    meta = _decode_batch([3], 4, 2, seed=0)
    caches = torch.zeros(1, 12, 16), torch.zeros(1, 12, 16)
    q = torch.randn(1, 16)
    cos, sin = _rope(torch.tensor([2]), 16, torch.float32)
    bad = torch.tensor([12])  # one past the end
    with pytest.raises(RuntimeError, match="slot_mapping"):
        fused.rope_attend_decode(q, q, q, cos, sin, *caches, bad, meta.kv_slots, meta.seq_lens, num_heads=1, scale=1.0)


@needs_native
def test_bad_chunk_bounds_raise_instead_of_reading_out_of_bounds():
    caches = torch.zeros(1, 12, 16), torch.zeros(1, 12, 16)
    q = torch.randn(3, 16)
    cos, sin = _rope(torch.arange(3), 16, torch.float32)
    slots, kv_slots = torch.arange(3), torch.arange(8)[None]
    with pytest.raises(RuntimeError, match="bounds"):  # the chunk claims 4 rows of 3
        fused.rope_attend_chunks(q, q, q, cos, sin, *caches, slots, kv_slots, torch.tensor([0, 4]), torch.tensor([0]),
                                 num_heads=1, scale=1.0)
    with pytest.raises(RuntimeError, match="exceed"):  # 6 cached + 3 new > 8 keys
        fused.rope_attend_chunks(q, q, q, cos, sin, *caches, slots, kv_slots, torch.tensor([0, 3]), torch.tensor([6]),
                                 num_heads=1, scale=1.0)


# -- whole models ---------------------------------------------------------------------------------------
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
MODELS = {
    "llama": (LlamaForCausalLM, ModelConfig(model_type="llama", **TINY)),
    "qwen3": (Qwen3ForCausalLM, ModelConfig(model_type="qwen3", **TINY)),
    "gemma3": (Gemma3ForCausalLM, ModelConfig(
        model_type="gemma3_text", **{**TINY, "num_key_value_heads": 1}, hidden_act="gelu_pytorch_tanh",
        sliding_window=6, query_pre_attn_scalar=16, layer_types=("sliding_attention", "full_attention"),
        rope_local_base_freq=10000.0)),
}


def _tiny(name: str, dtype: torch.dtype) -> torch.nn.Module:
    cls, config = MODELS[name]
    torch.manual_seed(0)
    model = cls(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return prepare_for_inference(model.to(dtype))


def _decode_logits(model: torch.nn.Module, prompts: list[list[int]]) -> torch.Tensor:
    """Prefill every prompt (one batch, torch ops), then one decode step for all: its logits [B, V]."""
    c = model.config
    block_size, num_blocks = 4, 64
    caches = [torch.zeros(c.num_key_value_heads, (num_blocks + 1) * block_size, c.head_dim) for _ in range(4)]
    k_caches, v_caches = caches[:2], caches[2:]
    tables, start = [], 0
    for p in prompts:
        count = -(-(len(p) + 1) // block_size)
        tables.append(tuple(range(start, start + count)))
        start += count
    seqs = [SequenceSlice(0, len(p), t) for p, t in zip(prompts, tables)]
    meta = build_metadata(seqs, block_size, torch.device("cpu"), pad_slot=num_blocks * block_size)
    ids = torch.tensor([t for p in prompts for t in p])
    positions = torch.cat([torch.arange(len(p)) for p in prompts])
    with fused.disabled():  # short prompts would go native too: keep both runs' caches equal
        logits = model(ids, positions, PagedAttention(k_caches, v_caches, meta))
    ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
    next_ids = logits[ends].argmax(-1)
    seqs = [SequenceSlice(len(p), 1, t) for p, t in zip(prompts, tables)]
    meta = build_metadata(seqs, block_size, torch.device("cpu"), pad_slot=num_blocks * block_size)
    positions = torch.tensor([len(p) for p in prompts])
    return model(next_ids, positions, PagedAttention(k_caches, v_caches, meta))


PROMPTS = [[5, 9, 200, 31, 7, 7, 1], [100], list(range(40, 60)), [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]]


@needs_native
@pytest.mark.parametrize("name", list(MODELS))
def test_model_decode_step_fp32_logits_unchanged(name):
    model = _tiny(name, torch.float32)
    got = _decode_logits(model, PROMPTS)
    with fused.disabled():
        ref = _decode_logits(model, PROMPTS)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("name", list(MODELS))
def test_model_decode_step_bf16_logits_within_rounding(name):
    model = _tiny(name, torch.bfloat16)
    got = _decode_logits(model, PROMPTS)
    with fused.disabled():
        ref = _decode_logits(model, PROMPTS)
    # Both paths round to bf16 at the same points; rare one-ulp differences propagate through two
    # layers and the head, so the logits agree to a few bf16 ulps of their scale.
    scale = float(ref.abs().max())
    assert float((got - ref).abs().max()) <= 8 * torch.finfo(torch.bfloat16).eps * scale


@needs_native
@pytest.mark.parametrize("name", list(MODELS))
def test_engine_greedy_tokens_unchanged(name):
    model = _tiny(name, torch.float32)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    def generate() -> list[list[int]]:
        engine = LLMEngine(model, config=EngineConfig(block_size=4, max_num_seqs=4))
        return engine.generate(PROMPTS, params)

    got = generate()
    with fused.disabled():
        assert got == generate()


def test_training_keeps_plain_torch_ops():
    model = LlamaForCausalLM(MODELS["llama"][1]).train()
    ids = torch.tensor([1, 2, 3, 4, 5])
    meta = build_metadata([SequenceSlice(0, 5, (0, 1))], 4, torch.device("cpu"))
    with torch.enable_grad():
        assert not fused.enabled_for(torch.zeros(1))  # autograd on: the torch path runs
        caches = [torch.zeros(2, 8, 16) for _ in range(4)]
        logits = model(ids, torch.arange(5), PagedAttention(caches[:2], caches[2:], meta))
        logits.logsumexp(-1).sum().backward()
    assert model.model.layers[0].input_layernorm.weight.grad is not None
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


@pytest.mark.skipif(not fused.native_available(), reason="native fused ops unavailable here")
def test_each_level_runs_the_best_build_at_or_below_it(monkeypatch):
    expected = {"generic": "generic", "avx2": "avx2", "avx512": "avx512", "avx512vnni": "avx512", "avx512bf16": "avx512"}
    try:
        for level, build in expected.items():
            if not set(isa.LEVEL_FLAGS[level]) <= isa.cpu_flags():
                continue  # forcing a level the CPU lacks falls back to the detected one
            monkeypatch.setenv(isa.ENV_VAR, level)
            _reload_kernels()
            assert fused.native_level() == build, level
            assert fused.native_available() == (build != "generic")
            assert fused.enabled_for(torch.zeros(2)) == (build != "generic")
            if build == "generic":  # each build refuses, saying why
                assert fused.native_unavailable_reason().count("excludes") == 2
    finally:
        monkeypatch.undo()
        _reload_kernels()


def test_build_failure_falls_back_to_torch(monkeypatch):
    def fail(self):
        raise OSError("no compiler")

    monkeypatch.setattr(native_build.NativeExtension, "_compile", fail)
    module, _, reason = fused._native_or_reason.__wrapped__()
    assert module is None and ("no compiler" in reason or "CPU" in reason)
    monkeypatch.setattr(fused, "_native", lambda: None)
    x = torch.randn(2, 32)
    normed, h = fused.add_rms_norm(x, None, torch.ones(32), 1e-6)
    assert h is x and torch.equal(normed, fused.rms_norm_reference(x, torch.ones(32), 1e-6, False))
    assert not fused.enabled_for(x)
