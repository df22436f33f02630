"""LoRA fine-tuning on a tiny random-weight Llama: the invariants, each against an oracle.

- zero-initialized B: the adapted model's logits equal the base model's;
- training moves only adapter tensors (every base tensor compared bit for bit);
- the packed training forward equals the inference reference (`full_logits`), with and without
  gradient checkpointing (same logits, same gradients);
- the masked, shifted loss equals one computed by hand from the reference logits;
- merge -> saved format -> Luodi's loader gives base + adapter's logits;
- the Python API and the CLI: files written, errors as one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from luodi.errors import InvalidParameterError
from luodi.finetune import forward
from luodi.finetune.data import IGNORE_INDEX, TrainingExample
from luodi.finetune.forward import all_logits, batch_loss, pack
from luodi.finetune.lora import (
    AdapterError, LoraOptions, attach_lora, enable_gradient_checkpointing, load_adapter, load_for_training,
    save_adapter,
)
from luodi.finetune.merge import merge_adapter
from luodi.finetune.train import TrainOptions, train_epochs
from luodi.models.loader import load_model
from luodi.models.reference import full_logits

pytest.importorskip("peft")

SEQ_A = [5, 9, 17, 3, 44, 90, 12, 7, 61, 33, 2]
SEQ_B = [8, 100, 23, 54, 6, 77, 31]


def _examples() -> list[TrainingExample]:
    a = TrainingExample(SEQ_A, [IGNORE_INDEX] * 4 + SEQ_A[4:], "a")
    b = TrainingExample(SEQ_B, [IGNORE_INDEX, *SEQ_B[1:3], IGNORE_INDEX, IGNORE_INDEX, *SEQ_B[5:]], "b")
    return [a, b]


def _base(tiny_model_dir: Path) -> torch.nn.Module:
    return load_for_training(str(tiny_model_dir), device="cpu", dtype="float32").model


def _train(model: torch.nn.Module, steps: int = 3, lr: float = 1e-2) -> None:
    examples = _examples()
    train_epochs(model, examples * steps, None, TrainOptions(epochs=1, lr=lr, batch_size=2), report=None)


def _split(logits: torch.Tensor, lens: list[int]) -> list[torch.Tensor]:
    return list(logits.split(lens))


def test_zero_b_leaves_logits_unchanged(tiny_model_dir):
    base = _base(tiny_model_dir)
    batch = pack(_examples())
    with torch.no_grad():
        before = all_logits(base, batch)
        peft_model = attach_lora(base, LoraOptions(rank=4, alpha=8))
        after = all_logits(peft_model, batch)
    assert torch.equal(before, after)


def test_training_changes_only_adapter_tensors(tiny_model_dir):
    base = _base(tiny_model_dir)
    peft_model = attach_lora(base, LoraOptions(rank=4, alpha=8))
    frozen = {n: t.detach().clone() for n, t in peft_model.state_dict().items() if "lora_" not in n}
    adapters = {n: t.detach().clone() for n, t in peft_model.state_dict().items() if "lora_" in n}
    _train(peft_model)
    state = peft_model.state_dict()
    assert len(frozen) > 0 and all(torch.equal(state[n], t) for n, t in frozen.items())
    changed = [n for n, t in adapters.items() if not torch.equal(state[n], t)]
    assert len(changed) == len(adapters)  # every A and B of all 7 projections x 2 layers moved
    assert len(adapters) == 2 * 7 * 2


def test_training_forward_equals_inference_reference(tiny_model_dir):
    model = _base(tiny_model_dir)
    batch = pack(_examples())
    got = _split(all_logits(model, batch), [len(SEQ_A), len(SEQ_B)])  # autograd on: the training path
    for seq, logits in zip([SEQ_A, SEQ_B], got, strict=True):
        assert (logits.detach() - full_logits(model, seq)).abs().max().item() < 1e-4


def test_gradient_checkpointing_gives_same_loss_and_gradients(tiny_model_dir):
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = attach_lora(_base(tiny_model_dir), LoraOptions(rank=4, alpha=8))
        with torch.no_grad():  # non-zero B so that every adapter tensor gets a gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        if checkpointing:
            enable_gradient_checkpointing(model)
        loss = batch_loss(model, pack(_examples()))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    assert torch.equal(loss_plain, loss_ckpt)
    for name, grad in grads_plain.items():
        assert torch.allclose(grad, grads_ckpt[name], atol=1e-6), name


def test_masked_loss_equals_hand_computed(tiny_model_dir):
    model = _base(tiny_model_dir)
    total, count = 0.0, 0
    for ex in _examples():
        logprobs = F.log_softmax(full_logits(model, ex.input_ids).double(), dim=-1)
        for t in range(len(ex.input_ids) - 1):  # logits at t predict the label at t + 1
            if ex.labels[t + 1] != IGNORE_INDEX:
                total -= float(logprobs[t, ex.labels[t + 1]])
                count += 1
    assert count == 7 + 4
    assert abs(float(batch_loss(model, pack(_examples()))) - total / count) < 1e-5


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_loss_and_gradient_equal_autograd_through_full_logits(monkeypatch, softcap):
    """`_LinearCrossEntropy` (a few rows at a time, gradient computed with the loss) against
    autograd through the whole [N, V] fp32 logits; chunks of 3 rows over 10 rows."""
    monkeypatch.setattr(forward, "_LOSS_CHUNK_ELEMENTS", 3 * 50)
    monkeypatch.setattr(forward, "_LOSS_MIN_ROWS", 1)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (10,), generator=g)
    loss = forward._LinearCrossEntropy.apply(hidden, weight, targets, softcap).mean()
    (grad,) = torch.autograd.grad(3.0 * loss, hidden)
    logits = hidden @ weight.T
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    ref = F.cross_entropy(logits, targets)
    (ref_grad,) = torch.autograd.grad(3.0 * ref, hidden)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=2e-6)  # sums of 50 fp32 terms ~1


def test_lora_gradients_through_chunked_loss_equal_full_logits(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(forward, "_LOSS_CHUNK_ELEMENTS", 4 * 128)  # 4 rows a chunk (vocabulary 128)
    monkeypatch.setattr(forward, "_LOSS_MIN_ROWS", 1)
    torch.manual_seed(1)
    model = attach_lora(_base(tiny_model_dir), LoraOptions(rank=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = pack(_examples())
    results = []
    for loss_of in (batch_loss, lambda m, b: F.cross_entropy(*forward.trained_logits(m, b))):
        model.zero_grad(set_to_none=True)
        loss = loss_of(model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss, grads), (ref_loss, ref_grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_adapter_save_load_and_merge_match_base_plus_adapter(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    peft_model = attach_lora(_base(tiny_model_dir), LoraOptions(rank=4, alpha=8))
    _train(peft_model)
    adapter = save_adapter(peft_model, tmp_path / "adapter", str(tiny_model_dir))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter))
    assert not [f for f in os.listdir(adapter) if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    with torch.no_grad():
        expected = [full_logits(peft_model, seq) for seq in (SEQ_A, SEQ_B)]
        base = full_logits(_base(tiny_model_dir), SEQ_A)
    assert (expected[0] - base).abs().max() > 1e-3  # the adapter does change the model

    reloaded = load_adapter(_base(tiny_model_dir), adapter)
    assert torch.equal(full_logits(reloaded, SEQ_A), expected[0])

    merged_dir = merge_adapter(str(tiny_model_dir), adapter, tmp_path / "merged", dtype="float32").out
    for for_inference in (False, True):
        merged = load_model(str(merged_dir), device="cpu", dtype="float32", for_inference=for_inference).model
        for seq, ref in zip((SEQ_A, SEQ_B), expected, strict=True):
            assert (full_logits(merged, seq) - ref).abs().max().item() < 1e-4


def test_lora_options_are_validated():
    with pytest.raises(InvalidParameterError, match="qkv_proj"):
        LoraOptions(target_modules=("qkv_proj",))
    with pytest.raises(InvalidParameterError, match="--rank 0"):
        LoraOptions(rank=0)
    with pytest.raises(InvalidParameterError, match="--lr"):
        TrainOptions(lr=0.0)


def test_merge_rejects_a_directory_without_an_adapter(tiny_model_dir, tmp_path):
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        merge_adapter(str(tiny_model_dir), tmp_path, tmp_path / "out")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_python_api_writes_adapter_and_loss_files(tiny_model_dir, tmp_path):
    from luodi import finetune

    rows = [{"prompt": f"w{i} w{i + 1}", "completion": f" w{i + 2} w{i + 3}"} for i in range(10, 40, 3)]
    data = _write_jsonl(tmp_path / "train.jsonl", rows)
    result = finetune(str(tiny_model_dir), data, eval_data=data, out=tmp_path / "adapter", epochs=2, lr=1e-2,
                      batch_size=4, dtype="float32", device="cpu", report=None)
    files = set(os.listdir(result.adapter_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", "loss.json", "loss.png"} <= files
    record = json.loads((result.adapter_dir / "loss.json").read_text())
    assert len(record["train"]) == result.num_steps == 2 * 3
    assert [e["epoch"] for e in record["eval"]] == [0, 1, 2]
    assert result.eval_loss_after < result.eval_loss_before  # it learns the training file
    assert result.tokens_per_s > 0


def luodi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "luodi", *args], capture_output=True, text=True, timeout=300)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = " ".join(line for line in result.stderr.splitlines() if line.strip())
    for needle in needles:
        assert needle in message, message


def test_cli_reports_bad_data_as_one_line(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "w3"}\n', encoding="utf-8")
    result = luodi("finetune", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "a"),
                   "--dtype", "float32")
    _assert_one_line_error(result, "bad.jsonl:1", "completion")


def test_cli_rejects_unknown_target(tiny_model_dir, tmp_path):
    data = _write_jsonl(tmp_path / "t.jsonl", [{"prompt": "w3", "completion": " w4"}])
    result = luodi("finetune", "--model", str(tiny_model_dir), "--data", str(data), "--target", "q_proj,wq")
    _assert_one_line_error(result, "wq", "q_proj,k_proj")


def test_cli_finetune_then_merge(tiny_model_dir, tmp_path):
    data = _write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"w{i}", "completion": f" w{i + 1}"} for i in range(3, 9)])
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    result = luodi("finetune", "--model", str(tiny_model_dir), "--data", str(data), "--eval", str(data),
                   "--epochs", "1", "--rank", "4", "--dtype", "float32", "--out", str(adapter))
    assert result.returncode == 0, result.stderr
    assert "eval loss before training" in result.stdout and "after epoch 1" in result.stdout
    assert "rank: 4 (given)" in result.stdout and "epochs: 1 (given)" in result.stdout
    assert "learning rate: 0.001 (6 training examples" in result.stdout  # planned, with its reason
    assert "held-out probe" in result.stdout and "general text perplexity per byte" in result.stdout
    assert (adapter / "report.json").is_file()
    result = luodi("merge", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--out", str(merged))
    assert result.returncode == 0, result.stderr
    assert (merged / "quant.json").is_file() and (merged / "model.safetensors").is_file()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_bf16_training_learns(tiny_model_dir, checkpointing):
    """Mixed precision (bf16 base, fp32 adapters under autocast): each step sees the updated adapters."""
    torch.manual_seed(0)
    model = attach_lora(load_for_training(str(tiny_model_dir), device="cpu", dtype="bfloat16").model,
                        LoraOptions(rank=4, alpha=8))
    if checkpointing:
        enable_gradient_checkpointing(model)
    log = train_epochs(model, _examples() * 4, _examples(), TrainOptions(epochs=2, lr=1e-2, batch_size=2),
                       report=None)
    losses = [e["loss"] for e in log.evals]
    assert losses[2] < losses[1] < losses[0], losses
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
