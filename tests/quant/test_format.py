"""Luodi's saved format: save -> load gives the same logits; bad quant.json is a clear error.

Oracles: the in-memory quantized model (logits must be bit-identical after the round trip, the
float tensors having been put on the bf16 grid first so that storing them in bf16 loses nothing)
and, for the unquantized format, transformers loading the very same directory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from luodi.errors import ModelFormatError
from luodi.loading.tokenizer import Tokenizer
from luodi.models.config import config_to_hf_dict
from luodi.models.loader import load_config_and_weights, load_model
from luodi.models.reference import full_logits
from luodi.models.registry import build_model
from luodi.quant.format import QUANT_FILE, QuantSpec, save_model
from luodi.quant_tools.quantize import QuantizeOptions, quantize_modules

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)
IDS = list(range(3, 40, 2))


def _tiny_tokenizer() -> Tokenizer:
    vocab = {f"w{i}": i for i in range(TINY["vocab_size"])}
    backend = Backend(models.WordLevel(vocab=vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, bos_token=None, eos_tokens=["w1"])


@pytest.fixture(scope="module", params=["untied", "tied"])
def float_model(request, tmp_path_factory):
    """A tiny random Llama in fp32 whose weights already sit on the bf16 grid."""
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(**TINY, tie_word_embeddings=request.param == "tied")
    hf = transformers.AutoModelForCausalLM.from_config(hf_config).to(torch.bfloat16)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path, safe_serialization=True)
    config, weights, _ = load_config_and_weights(path)
    return build_model(config, weights, dtype=torch.float32, device=torch.device("cpu"))


def _save(model, scheme: str, out: Path) -> torch.nn.Module:
    model = copy.deepcopy(model)
    modules = quantize_modules(model, QuantizeOptions(scheme=scheme)) if scheme != "none" else {}
    save_model(model, _tiny_tokenizer(), config_to_hf_dict(model.config), out, QuantSpec(scheme=scheme, modules=modules))
    return model


@pytest.mark.parametrize("scheme", ["none", "int8", "int4", "w8a8"])
def test_save_then_load_gives_identical_logits(float_model, scheme, tmp_path):
    quantized = _save(float_model, scheme, tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", dtype="float32", for_inference=False)
    assert torch.equal(full_logits(loaded.model, IDS), full_logits(quantized, IDS))
    assert loaded.tokenizer.encode("w5 w7") == [5, 7]


@pytest.mark.parametrize("scheme", ["int8", "int4", "w8a8"])
def test_quantized_file_is_smaller_and_fused_inference_agrees(float_model, scheme, tmp_path):
    _save(float_model, scheme, tmp_path)
    plain = load_model(str(tmp_path), device="cpu", dtype="bfloat16", for_inference=False)
    fused = load_model(str(tmp_path), device="cpu", dtype="bfloat16", for_inference=True)
    assert not hasattr(fused.model.model.layers[0].self_attn, "q_proj")  # q/k/v became one layer
    ref, got = full_logits(plain.model, IDS), full_logits(fused.model, IDS)
    # Same integers and scales. The native kernels also round the bf16 activations to int8 per
    # 32-column block (luodi.kernels.lowbit: up to ~2.5 % of a layer's largest output), and the
    # reference rounds the dequantized weights to bf16: over two layers 4-5 % of the largest logit.
    assert (got - ref).abs().max() <= 0.08 * ref.abs().max()


def test_unquantized_format_is_a_transformers_checkpoint(float_model, tmp_path):
    _save(float_model, "none", tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([IDS])).logits[0]
    assert (full_logits(float_model, IDS) - ref).abs().max() < 1e-4


def _rewrite_quant_json(path: Path, edit) -> None:
    raw = json.loads((path / QUANT_FILE).read_text())
    edit(raw)
    (path / QUANT_FILE).write_text(json.dumps(raw))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda raw: raw.update(format_version=99), "format_version 99"),
    (lambda raw: raw.update(scheme="int3"), "scheme 'int3'"),
    (lambda raw: raw["modules"].update({"model.layers.7.mlp.up_proj": {"scheme": "int8"}}), "does not have"),
    (lambda raw: raw["modules"]["model.layers.0.mlp.up_proj"].update(group_size=64), "shape"),
    (lambda raw: raw["modules"].update({"model.layers.0.mlp.up_proj": {"scheme": "int8"}}), "shape"),
    (lambda raw: raw["modules"]["model.layers.0.mlp.up_proj"].update(scheme="int8"), "do not fit scheme 'int8'"),
    (lambda raw: raw["modules"]["model.layers.0.mlp.up_proj"].update(scale_bits=12), "up_proj'.*scale bits 12"),
    # stored with 8-bit codes (float weights), named fp16: the fp16 tensors are missing
    (lambda raw: raw["modules"]["model.layers.0.mlp.up_proj"].update(scale_bits=16), r"lacks 2 tensor.*up_proj\.mins"),
])
def test_mismatched_quant_json_is_a_clear_error(float_model, tmp_path, edit, message):
    _save(float_model, "int4", tmp_path)
    _rewrite_quant_json(tmp_path, edit)
    with pytest.raises(ModelFormatError, match=message):
        load_model(str(tmp_path), device="cpu", dtype="float32")


def test_corrupt_quant_json_is_a_clear_error(float_model, tmp_path):
    _save(float_model, "int8", tmp_path)
    (tmp_path / QUANT_FILE).write_text("{not json")
    with pytest.raises(ModelFormatError, match="quant.json is not readable JSON"):
        load_model(str(tmp_path), device="cpu", dtype="float32")
