"""The native layer stack runs the same kernels as the Python path in the same order: its logits
must be bit-identical to the Python path's — prompt chunks and decode steps alike — for every
family and weight kind it takes, at each instruction-set level with native builds (`level`)."""

from __future__ import annotations

import pytest
import torch

from luodi.kernels import fused, isa, lowbit
from luodi.kernels.attention import PagedAttention, SequenceSlice, build_metadata
from luodi.kernels.report import KernelPath
from luodi.models import native_stack
from luodi.models.adapters import LoraAdapter, attach_adapters
from luodi.models.config import ModelConfig
from luodi.models.inference import prepare_for_inference
from luodi.models.registry import model_class
from luodi.quant_tools.quantize import QuantizeOptions, quantize_modules
from families import FAMILIES, luodi_config

pytestmark = pytest.mark.skipif(
    not (lowbit.native_available() and fused.native_available() and native_stack._native() is not None),
    reason="native kernels unavailable on this CPU",
)

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
# Every shared family case but partial rotary, which the native stack leaves to the Python path.
NATIVE_FAMILIES = [name for name in FAMILIES if not name.endswith("-partial")]
PROMPTS = [[5, 9, 200, 31, 7, 7, 1], [100], list(range(40, 60)), [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]]
BLOCK_SIZE, NUM_BLOCKS = 4, 64


def _config(name: str) -> ModelConfig:
    return luodi_config(pytest.importorskip("transformers"), name, **TINY)


def _model(name: str, scheme: str) -> torch.nn.Module:
    config = _config(name)
    torch.manual_seed(0)
    model = model_class(config)(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model = model.to(torch.bfloat16).eval()
    if scheme != "bf16":
        quantize_modules(model, QuantizeOptions(scheme))
    return prepare_for_inference(model)


@torch.inference_mode()
def _step_logits(model: torch.nn.Module, steps: int) -> list[torch.Tensor]:
    """Prefill PROMPTS in one batch, then `steps` greedy decode steps for all: each step's logits."""
    c = model.config
    shape = (c.num_key_value_heads, (NUM_BLOCKS + 1) * BLOCK_SIZE, c.head_dim)
    k_caches = [torch.zeros(shape) for _ in range(c.num_hidden_layers)]
    v_caches = [torch.zeros(shape) for _ in range(c.num_hidden_layers)]
    tables, start = [], 0
    for p in PROMPTS:
        count = -(-(len(p) + steps) // BLOCK_SIZE)
        tables.append(tuple(range(start, start + count)))
        start += count

    def forward(seqs: list[SequenceSlice], ids: list[int], positions: list[int]) -> torch.Tensor:
        meta = build_metadata(seqs, BLOCK_SIZE, torch.device("cpu"), pad_slot=NUM_BLOCKS * BLOCK_SIZE)
        return model(torch.tensor(ids), torch.tensor(positions), PagedAttention(k_caches, v_caches, meta))

    logits = forward([SequenceSlice(0, len(p), t) for p, t in zip(PROMPTS, tables)],
                     [t for p in PROMPTS for t in p], [i for p in PROMPTS for i in range(len(p))])
    last = logits[torch.tensor([len(p) for p in PROMPTS]).cumsum(0) - 1]
    out = [logits]
    for step in range(steps):
        lengths = [len(p) + step for p in PROMPTS]
        seqs = [SequenceSlice(n, 1, t) for n, t in zip(lengths, tables)]
        last = forward(seqs, last.argmax(-1).tolist(), lengths)
        out.append(last)
    return out


def _reload_kernels() -> None:
    for cached in (lowbit._native_or_reason, fused._native_or_reason, fused._native):
        cached.cache_clear()


@pytest.fixture(params=["avx512bf16", "avx512vnni", "avx2"])
def level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Build the model and run the stack with the kernels of this forced level, then restore the default."""
    monkeypatch.setenv(isa.ENV_VAR, request.param)
    _reload_kernels()
    if lowbit.native_level() != request.param or not fused.native_available():
        pytest.skip(f"no native {request.param} builds here")
    yield request.param
    monkeypatch.undo()
    _reload_kernels()


@pytest.mark.parametrize("scheme", ["bf16", "int8", "int4", "w8a8"])
@pytest.mark.parametrize("name", NATIVE_FAMILIES)
def test_step_logits_equal_the_python_path(name, scheme, level, monkeypatch):
    model = _model(name, scheme)
    stack = model.model.native_stack
    if level != "avx512bf16" and scheme == "bf16":  # no BF16 kernel below avx512bf16: the Python path runs
        assert stack is None
        return
    assert stack is not None
    calls = []
    monkeypatch.setattr(stack, "stack", _Counting(stack.stack, calls))
    got = _step_logits(model, steps=10)  # the windows (8) are passed by every prompt but one
    assert calls == ["chunks"] + ["decode"] * 10  # every step ran natively
    monkeypatch.setattr(native_stack, "_disabled", True)
    want = _step_logits(model, steps=10)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g, w), f"step {step}: max |diff| {float((g - w).abs().max())}"


class _Counting:
    """The native stack, noting which of its entry points each step called."""

    def __init__(self, stack, calls: list) -> None:
        self.stack, self.calls = stack, calls

    def decode(self, *args):
        self.calls.append("decode")
        return self.stack.decode(*args)

    def chunks(self, *args):
        self.calls.append("chunks")
        return self.stack.chunks(*args)


def test_models_it_cannot_run_keep_the_python_path():
    config = _config("llama")
    fp32 = prepare_for_inference(model_class(config)(config).eval())  # fp32 weights are not packed
    assert fp32.model.native_stack is None
    path = native_stack.stack_path(fp32)  # what the startup report says, and why
    assert (path.kernels, path.path) == ("layer stack", "python") and "not every layer" in path.reason
    assert native_stack.stack_path(_model("llama", "bf16")) == KernelPath("layer stack", "native")
    assert _model("phi3-longrope-partial", "bf16").model.native_stack is None  # it rotates whole heads only


def test_attaching_adapters_detaches_the_stack():
    model = _model("llama", "bf16")
    assert model.model.native_stack is not None
    a, b = torch.randn(2, 96), torch.randn(64, 2)  # down_proj: 96 -> 64
    attach_adapters(model, [LoraAdapter("x", "unused", {"model.layers.0.mlp.down_proj": (a, b)})])
    assert model.model.native_stack is None


def test_a_mismatched_step_is_a_clear_error():
    model = _model("llama", "bf16")
    stack = model.model.native_stack.stack
    x = torch.zeros(1, 64, dtype=torch.bfloat16)
    cos = sin = torch.ones(1, 16, dtype=torch.bfloat16)
    caches = [torch.zeros(2, 8, 16)]  # one layer's caches for a three-layer stack
    slots = torch.zeros(1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="one k and one v cache per layer"):
        lengths = torch.ones(1, dtype=torch.long)
        stack.decode(x, [cos], [sin], caches, caches, slots, slots.view(1, 1), lengths)

