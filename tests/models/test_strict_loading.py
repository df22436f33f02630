"""Loading is strict: a checkpoint tensor the family does not expect, or one it expects and does
not find, is refused by name; what is legitimately optional still loads.

The oracle: a tiny random-weight transformers checkpoint saved as safetensors (as in
test_families), edited with the `safetensors` library, and transformers' own logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from luodi.errors import ModelFormatError
from luodi.models.loader import load_config_and_weights
from luodi.models.reference import full_logits
from luodi.models.registry import build_model

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128,
)


def _save(path: Path, **overrides) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY, **overrides)).eval()
    hf_model.save_pretrained(path, safe_serialization=True)
    return hf_model, path / "model.safetensors"


def _edit(
    weights_file: Path, add: dict[str, torch.Tensor] | None = None, remove: tuple[str, ...] = (),
) -> None:
    state = {**load_file(str(weights_file)), **(add or {})}
    for name in remove:
        del state[name]
    save_file(state, str(weights_file), metadata={"format": "pt"})


def _build(path: Path) -> torch.nn.Module:
    config, weights, _ = load_config_and_weights(path)
    return build_model(config, weights, dtype=torch.float32, device=torch.device("cpu"))


def test_an_unexpected_tensor_is_refused_by_name(tmp_path):
    # A bias the config does not declare (mlp_bias): before, it was dropped without a word.
    _, weights_file = _save(tmp_path)
    _edit(weights_file, add={"model.layers.1.mlp.down_proj.bias": torch.zeros(TINY["hidden_size"])})
    expected = r"holds 1 tensor\(s\) \(model\.layers\.1\.mlp\.down_proj\.bias\) that a llama model"
    with pytest.raises(ModelFormatError, match=expected):
        _build(tmp_path)


def test_a_missing_tensor_is_refused_by_name(tmp_path):
    _, weights_file = _save(tmp_path)
    _edit(weights_file, remove=("model.layers.0.self_attn.k_proj.weight",))
    expected = r"lacks 1 tensor\(s\) \(model\.layers\.0\.self_attn\.k_proj\.weight\) that it needs"
    with pytest.raises(ModelFormatError, match=expected):
        _build(tmp_path)


def test_many_missing_tensors_name_the_first_few_and_count_them(tmp_path):
    # Layer 1's nine tensors gone: five named (in sorted order), the other four counted.
    _, weights_file = _save(tmp_path)
    layer1 = sorted(name for name in load_file(str(weights_file)) if name.startswith("model.layers.1."))
    assert len(layer1) == 9
    _edit(weights_file, remove=tuple(layer1))
    with pytest.raises(ModelFormatError) as info:
        _build(tmp_path)
    assert f"lacks 9 tensor(s) ({', '.join(layer1[:5])} and 4 more)" in str(info.value)


def test_optional_tensors_still_load(tmp_path):
    # A tied lm_head written anyway and rotary tables older checkpoints carry are not errors, and
    # the model they load is transformers' model.
    hf_model, weights_file = _save(tmp_path, tie_word_embeddings=True)
    embedding = hf_model.model.embed_tokens.weight.detach()
    head_dim = TINY["hidden_size"] // TINY["num_attention_heads"]
    inv_freq = {
        f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(head_dim // 2) for i in range(2)
    }
    _edit(weights_file, add={"lm_head.weight": embedding.clone(), **inv_freq})
    ours = _build(tmp_path)
    ids = torch.arange(20) * 7 % TINY["vocab_size"]
    with torch.no_grad():
        ref = hf_model(ids[None]).logits[0]
    assert (full_logits(ours, ids.tolist()) - ref).abs().max().item() < 1e-4


def test_a_packed_projection_of_the_wrong_size_is_refused_by_name(tmp_path):
    # Phi 3 packs q/k/v into qkv_proj: rows for fewer heads than the config states are named, not
    # split into wrongly sized parts.
    hf_model = transformers.Phi3ForCausalLM(transformers.Phi3Config(**TINY, pad_token_id=0, bos_token_id=1,
                                                                    eos_token_id=2))
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    name = "model.layers.0.self_attn.qkv_proj.weight"
    qkv = load_file(str(tmp_path / "model.safetensors"))[name]
    _edit(tmp_path / "model.safetensors", add={name: qkv[:-8]})
    rows = qkv.shape[0]
    expected = rf"weight {name} has {rows - 8} rows, the config implies {rows}"
    with pytest.raises(ModelFormatError, match=expected):
        _build(tmp_path)
