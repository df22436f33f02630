"""GGUFFile and the GGUF -> HF translation (the common metadata, each family's GGUF spec), against
gguf-py's GGUFReader/dequantize/TensorNameMap, transformers' GGUF loader, and for what that loader
does not read (Phi 3's LongRoPE, partial rotary, window) the HF model a file was written from."""

from __future__ import annotations

import math
import shutil
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.errors import ModelFormatError, ModelNotFoundError, UnsupportedArchitectureError
from luodi.loading.gguf import GGUFFile
from luodi.models import gemma3, llama, phi3, qwen2, qwen3
from luodi.models.config import ModelConfig, config_from_hf_dict
from luodi.models.gguf_load import gguf_hf_config, gguf_state_dict
from luodi.models.loader import load_config_and_weights
from luodi.models.reference import full_logits
from luodi.models.registry import build_model
from families import FAMILIES, LONGROPE_ORIGINAL
from oracles import assert_greedy_match

# -- synthetic files ---------------------------------------------------------------------------


def _dequantizable_types() -> list[Q]:
    """Every quantized type gguf-py can dequantize."""
    found = []
    for qtype in Q:
        if qtype in (Q.F32, Q.F16, Q.BF16) or qtype.name.startswith(("I", "F")) and "_" not in qtype.name:
            continue
        _, type_size = GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
        except NotImplementedError:
            continue
        found.append(qtype)
    return found


QUANT_TYPES = _dequantizable_types()
QUANTIZABLE = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16]


def write_all_types(path: Path) -> None:
    """A GGUF with a tensor of every storage type: quantized from real values where gguf-py can
    quantize, random block bytes for every other type it can dequantize (K-quants, IQ, ...)."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "llama")
    values = rng.standard_normal((3, 512)).astype(np.float32)
    writer.add_tensor("plain.f32", values)
    writer.add_tensor("plain.f16", values.astype(np.float16))
    writer.add_tensor("plain.f64", values[:, :64].astype(np.float64))
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        writer.add_tensor(f"plain.{np.dtype(dtype).name}", rng.integers(-100, 100, (2, 32)).astype(dtype))
    writer.add_tensor("vector.f32", values[0])
    for qtype in QUANTIZABLE:
        writer.add_tensor(f"quantized.{qtype.name}", gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    for qtype in QUANT_TYPES:
        block, type_size = GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, (3, 2 * type_size), dtype=np.uint8)
        writer.add_tensor(f"random.{qtype.name}", blocks, raw_dtype=qtype)
    _finish(writer)


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def all_types_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "all_types.gguf"
    write_all_types(path)
    return path


# -- reader: metadata and tensor table ------------------------------------------------------------


def _assert_metadata_equal(ours: dict[str, Any], reader: Any) -> None:
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(ours) == list(fields)
    for key, field in fields.items():
        expected = field.contents()
        if isinstance(ours[key], np.ndarray):
            np.testing.assert_array_equal(ours[key], np.asarray(expected), err_msg=key)
            assert ours[key].dtype == field.parts[field.data[0]].dtype, key
        else:
            assert ours[key] == expected, key
            assert type(ours[key]) is type(expected), key


def _assert_tensor_table_equal(f: GGUFFile, reader: Any) -> None:
    assert list(f.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = f.tensors[t.name]
        assert info.shape == tuple(reversed(t.shape.tolist()))
        assert info.ggml_type == t.tensor_type
        assert info.offset == t.data_offset
        assert info.n_bytes == t.n_bytes


@pytest.mark.parametrize("model", ["smollm2_gguf", "gemma3_gguf"])
def test_real_file_metadata_and_tensors_match_gguf_reader(model, request, oracle_reader):
    path = request.getfixturevalue(model)
    f, reader = GGUFFile(path), oracle_reader(path)
    _assert_metadata_equal(f.metadata, reader)
    _assert_tensor_table_equal(f, reader)
    assert f.version == reader.fields["GGUF.version"].contents()
    assert f.data_offset == reader.data_offset


def test_large_arrays_are_read_in_bulk(gemma3_gguf):
    f = GGUFFile(gemma3_gguf)
    tokens, scores = f.metadata["tokenizer.ggml.tokens"], f.metadata["tokenizer.ggml.scores"]
    assert isinstance(tokens, list) and len(tokens) == 262144 and tokens[2] == "<bos>"
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (262144,)


def test_synthetic_metadata_matches_gguf_reader(tmp_path):
    path = tmp_path / "meta.gguf"
    writer = gguf.GGUFWriter(path, "qwen3")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -300)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -7)
    writer.add_float32("t.f32", 0.1)
    writer.add_uint64("t.u64", 2**63)
    writer.add_int64("t.i64", -(2**40))
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo 世界 🙂")
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.floats", [0.5, -1.5])
    writer.add_array("t.bools", [True, False])
    writer.add_array("t.strs", ["a", "", "▁b"])
    writer.add_array("t.empty", [])
    writer.add_tensor("x", np.zeros((2, 32), np.float32))
    _finish(writer)
    f, reader = GGUFFile(path), gguf.GGUFReader(path)
    _assert_metadata_equal(f.metadata, reader)
    _assert_tensor_table_equal(f, reader)


# -- reader: tensor data ------------------------------------------------------------------------


def _oracle_values(reader_tensor: Any) -> np.ndarray:
    """gguf-py's float32 values of a tensor, in torch shape."""
    data, qtype = reader_tensor.data, reader_tensor.tensor_type
    if qtype in (Q.F64, Q.I8, Q.I16, Q.I32, Q.I64):
        values = data.astype(np.float32)
    else:
        values = gguf.quants.dequantize(data, qtype)
    return values.reshape(tuple(reversed(reader_tensor.shape.tolist())))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random block bytes hold NaN/inf scales
def test_dequantize_every_type_matches_gguf(all_types_file):
    f, reader = GGUFFile(all_types_file), gguf.GGUFReader(all_types_file)
    assert {info.ggml_type for info in f.tensors.values()} >= set(QUANT_TYPES) | {Q.F32, Q.F16, Q.BF16}
    for t in reader.tensors:
        ours = f.dequantize(t.name)
        assert ours.dtype == np.float32, t.name
        np.testing.assert_array_equal(ours, _oracle_values(t), err_msg=t.name)


def test_k_quants_are_covered():
    assert {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K} <= set(QUANT_TYPES)


@pytest.mark.parametrize("model", ["smollm2_gguf", "gemma3_gguf"])
def test_real_file_dequantize_matches_gguf(model, request, oracle_reader):
    """A sample of each storage type present: the two smallest tensors of the type."""
    path = request.getfixturevalue(model)
    f, reader = GGUFFile(path), oracle_reader(path)
    by_type: dict[Q, list[Any]] = defaultdict(list)
    for t in reader.tensors:
        by_type[t.tensor_type].append(t)
    assert len(by_type) >= 2
    for tensors in by_type.values():
        for t in sorted(tensors, key=lambda t: t.n_bytes)[:2]:
            np.testing.assert_array_equal(f.dequantize(t.name), _oracle_values(t), err_msg=t.name)


def test_float_tensors_are_zero_copy(all_types_file):
    f = GGUFFile(all_types_file)
    assert np.shares_memory(f.dequantize("plain.f32"), f.raw("plain.f32"))
    for name, dtype in (
        ("plain.f32", torch.float32),
        ("plain.f16", torch.float16),
        ("quantized.BF16", torch.bfloat16),
    ):
        tensor = f.torch_tensor(name)
        assert tensor.dtype == dtype
        assert tensor.data_ptr() == f.raw(name).ctypes.data
        np.testing.assert_array_equal(tensor.float().numpy(), f.dequantize(name))
    assert (
        f.torch_tensor("quantized.Q4_K" if "quantized.Q4_K" in f.tensors else "random.Q4_K").dtype
        == torch.float32
    )


def test_tensor_views_do_not_write_the_file(all_types_file, tmp_path):
    path = tmp_path / "copy.gguf"
    shutil.copy(all_types_file, path)
    before = path.read_bytes()
    f = GGUFFile(path)
    f.torch_tensor("plain.f32").fill_(7.0)
    del f
    assert path.read_bytes() == before


def test_raw_is_the_tensor_bytes(all_types_file):
    f, reader = GGUFFile(all_types_file), gguf.GGUFReader(all_types_file)
    for t in reader.tensors:
        assert f.raw(t.name).tobytes() == t.data.tobytes()


# -- reader: errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFoundError, match=str(path)):
        GGUFFile(path)


def test_bad_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelFormatError, match=f"{path} is not a GGUF file"):
        GGUFFile(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError, match=str(path)):
        GGUFFile(path)


def test_bad_version(all_types_file, tmp_path):
    data = bytearray(all_types_file.read_bytes())
    data[4:8] = (9).to_bytes(4, "little")
    path = tmp_path / "v9.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="version 9"):
        GGUFFile(path)


def test_truncated_tensor_data(all_types_file, tmp_path):
    f = GGUFFile(all_types_file)
    last = max(f.tensors.values(), key=lambda info: info.offset)
    path = tmp_path / "cut.gguf"
    path.write_bytes(all_types_file.read_bytes()[: last.offset + 10])
    with pytest.raises(
        ModelFormatError, match=rf"{path} is truncated: tensor {last.name} ends at byte"
    ) as err:
        GGUFFile(path)
    assert f"but the file has {last.offset + 10} bytes" in str(err.value)
    assert "luodi pull" in str(err.value)


def test_truncated_header(all_types_file, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(all_types_file.read_bytes()[:200])
    with pytest.raises(ModelFormatError, match=rf"{path} is truncated"):
        GGUFFile(path)


def test_unknown_tensor_type(all_types_file, tmp_path):
    data = bytearray(all_types_file.read_bytes())
    name = b"plain.f32"
    # Tensor info: u64 name length, name, u32 n_dims, u64 dims..., u32 type, u64 offset.
    start = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    n_dims = int.from_bytes(data[start : start + 4], "little")
    type_at = start + 4 + 8 * n_dims
    data[type_at : type_at + 4] = (77).to_bytes(4, "little")
    path = tmp_path / "badtype.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=r"tensor 'plain\.f32' has unknown ggml type id 77"):
        GGUFFile(path)


def test_undequantizable_type_is_a_format_error(tmp_path):
    path = tmp_path / "q8_1.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("w", np.zeros((1, GGML_QUANT_SIZES[Q.Q8_1][1]), np.uint8), raw_dtype=Q.Q8_1)
    _finish(writer)
    with pytest.raises(ModelFormatError, match="Q8_1"):
        GGUFFile(path).dequantize("w")


# -- config -----------------------------------------------------------------------------------------


def _model_config(f: GGUFFile) -> ModelConfig:
    """What loading builds from a GGUF file: its HF config dictionary through the one builder."""
    return config_from_hf_dict(gguf_hf_config(f))


# Published HF configs (config.json + generation_config.json) of the original checkpoints.
SMOLLM2_135M_INSTRUCT = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
    rope_scaling=None, max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False,
    hidden_act="silu", bos_token_id=1, eos_token_ids=(2,),
)  # fmt: skip
GEMMA3_270M = dict(
    model_type="gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048,
    num_hidden_layers=18,
    num_attention_heads=4, num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
    rope_scaling=None, max_position_embeddings=32768, tie_word_embeddings=True, attention_bias=False,
    hidden_act="gelu_pytorch_tanh", bos_token_id=2, eos_token_ids=(1, 106), sliding_window=512,
    rope_local_base_freq=10000.0, query_pre_attn_scalar=256, final_logit_softcapping=None,
    layer_types=tuple("full_attention" if i in (5, 11, 17) else "sliding_attention" for i in range(18)),
)  # fmt: skip


@pytest.mark.parametrize(
    ("model", "published"), [("smollm2_gguf", SMOLLM2_135M_INSTRUCT), ("gemma3_gguf", GEMMA3_270M)]
)
def test_config_matches_published_hf_config(model, published, request):
    config = _model_config(GGUFFile(request.getfixturevalue(model)))
    assert {key: getattr(config, key) for key in published} == published


def _hf_fields(hf: Any) -> dict[str, Any]:
    rope = hf.rope_parameters
    if "full_attention" in rope:  # Gemma 3: per layer type
        rope_theta, local = rope["full_attention"]["rope_theta"], rope["sliding_attention"]["rope_theta"]
    else:
        rope_theta, local = rope["rope_theta"], None
    eos = hf.eos_token_id if isinstance(hf.eos_token_id, list) else [hf.eos_token_id]
    fields = dict(
        model_type=hf.model_type, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size, num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads, num_key_value_heads=hf.num_key_value_heads,
        head_dim=hf.head_dim, rms_norm_eps=pytest.approx(hf.rms_norm_eps, rel=1e-6), rope_theta=rope_theta,
        max_position_embeddings=hf.max_position_embeddings, tie_word_embeddings=hf.tie_word_embeddings,
        bos_token_id=hf.bos_token_id, eos_token_id=eos[0],
        hidden_act=getattr(hf, "hidden_activation", None) or hf.hidden_act,
    )  # fmt: skip
    if local is not None:
        fields.update(
            rope_local_base_freq=local, sliding_window=hf.sliding_window, layer_types=tuple(hf.layer_types),
            query_pre_attn_scalar=hf.query_pre_attn_scalar,
            final_logit_softcapping=hf.final_logit_softcapping,
        )  # fmt: skip
    return fields


@pytest.mark.parametrize("model", ["smollm2_gguf", "gemma3_gguf"])
def test_config_matches_transformers(model, request, oracle_reader, hf_gguf_location):
    transformers = pytest.importorskip("transformers")
    path = request.getfixturevalue(model)
    directory, name = hf_gguf_location(path)
    expected = _hf_fields(transformers.AutoConfig.from_pretrained(directory, gguf_file=name))
    config = _model_config(GGUFFile(path))
    ours = {key: getattr(config, key) for key in expected if key != "eos_token_id"}
    ours["eos_token_id"] = config.eos_token_ids[0]
    assert ours == expected


def test_unknown_architecture(tmp_path):
    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(path, "rwkv6")
    writer.add_tensor("x", np.zeros((2, 32), np.float32))
    _finish(writer)
    with pytest.raises(UnsupportedArchitectureError, match=r"'rwkv6'.*gemma3.*llama.*phi3.*qwen2.*qwen3"):
        _model_config(GGUFFile(path))


def test_linear_rope_scaling(tmp_path):
    path = write_tiny_model(tmp_path / "scaled.gguf", "llama", extra=lambda w: (
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR), w.add_rope_scaling_factor(8.0)))  # fmt: skip
    assert _model_config(GGUFFile(path)).rope_scaling == {"rope_type": "linear", "factor": 8.0}


@pytest.mark.parametrize(("pattern", "expected"), [
    (None, ("sliding_attention", "sliding_attention")),  # no key: Gemma 3's period of 6
    (2, ("sliding_attention", "full_attention")),  # a period: every 2nd layer global
    ([False, True], ("full_attention", "sliding_attention")),  # per layer: True = sliding
])  # fmt: skip
def test_gemma3_sliding_layers(tmp_path, pattern, expected):
    def add_pattern(writer: gguf.GGUFWriter) -> None:
        if pattern is not None:
            writer.add_sliding_window_pattern(pattern)

    path = write_tiny_model(tmp_path / "gemma3.gguf", "gemma3", extra=add_pattern)
    assert _model_config(GGUFFile(path)).layer_types == expected


def _llama_cpp_rope_freqs(head_dim: int, theta: float, factor: float, low: float, high: float, original: int):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.generate_extra_tensors, for the test's oracle."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    divisors = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < original / high:
            divisors.append(1.0)
        elif wavelen > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


@pytest.mark.parametrize(("head_dim", "factor"), [(128, 8.0), (64, 32.0)])  # Llama 3.1 8B, Llama 3.2 1B
def test_llama3_rope_freqs_become_hf_rope_scaling(tmp_path, head_dim, factor):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta, path = 500000.0, tmp_path / "llama3.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for add, value in ((writer.add_block_count, 1), (writer.add_embedding_length, 4 * head_dim),
                       (writer.add_feed_forward_length, 64), (writer.add_head_count, 4),
                       (writer.add_rope_dimension_count, head_dim), (writer.add_rope_freq_base, theta),
                       (writer.add_vocab_size, 32)):  # fmt: skip
        add(value)
    writer.add_tensor("rope_freqs.weight", _llama_cpp_rope_freqs(head_dim, theta, factor, 1.0, 4.0, 8192))
    _finish(writer)
    config = _model_config(GGUFFile(path))
    expected = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}  # fmt: skip
    assert config.rope_scaling == expected
    hf = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                     rope_parameters={**expected, "rope_theta": theta})  # fmt: skip
    hf_inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    base = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    divisors = torch.from_numpy(GGUFFile(path).dequantize("rope_freqs.weight")).double()
    torch.testing.assert_close(hf_inv_freq.double(), base / divisors, rtol=1e-6, atol=0)


# -- tensors: names and converter transforms ----------------------------------------------------------

TINY = dict(hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=96, layers=2, vocab=40)
# The same dimensions as transformers config keys, for the family cases of tests/families.py.
TINY_HF = dict(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
# transformers' GGUF loader does not read qwen3's key_length: it keeps Qwen3Config's head_dim=128.
TINY_HEAD_DIM = {"qwen3": 128}


def write_tiny_model(path: Path, arch: str, tied: bool = True, extra: Any = None) -> Path:
    """A random-weight GGUF of `arch` with llama.cpp's tensor names, in mixed storage types."""
    rng = np.random.default_rng(1)
    d = {**TINY, "head_dim": TINY_HEAD_DIM.get(arch, TINY["head_dim"])}
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(d["layers"])
    writer.add_context_length(256)
    writer.add_embedding_length(d["hidden"])
    writer.add_feed_forward_length(d["ffn"])
    writer.add_head_count(d["heads"])
    writer.add_head_count_kv(d["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(d["head_dim"])
    if arch in ("gemma3", "qwen3"):
        writer.add_key_length(d["head_dim"])
        writer.add_value_length(d["head_dim"])
    if arch == "gemma3":
        writer.add_sliding_window(32)
    _add_tiny_vocab(writer, d["vocab"])
    if extra is not None:
        extra(writer)
    for name, shape in _tiny_tensor_shapes(arch, tied, d):
        _add_random_tensor(writer, rng, name, shape)
    _finish(writer)
    return path


def _add_tiny_vocab(writer: gguf.GGUFWriter, size: int, bos: int = 0, eos: int = 1) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([chr(ord("a") + i) if i < 26 else f"<t{i}>" for i in range(size)])
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(0)  # else transformers' Phi3Config pads with 32000, past a tiny vocabulary


def _tiny_tensor_shapes(arch: str, tied: bool, d: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    q_rows, kv_rows = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
    shapes = [("token_embd.weight", (d["vocab"], d["hidden"])), ("output_norm.weight", (d["hidden"],))]
    if not tied:
        shapes.append(("output.weight", (d["vocab"], d["hidden"])))
    for i in range(d["layers"]):
        layer = {
            "attn_norm.weight": (d["hidden"],),
            "attn_q.weight": (q_rows, d["hidden"]),
            "attn_k.weight": (kv_rows, d["hidden"]),
            "attn_v.weight": (kv_rows, d["hidden"]),
            "attn_output.weight": (d["hidden"], q_rows),
            "ffn_gate.weight": (d["ffn"], d["hidden"]),
            "ffn_up.weight": (d["ffn"], d["hidden"]),
            "ffn_down.weight": (d["hidden"], d["ffn"]),
            "ffn_norm.weight": (d["hidden"],),
        }
        if arch == "qwen2":
            layer.update({"attn_q.bias": (q_rows,), "attn_k.bias": (kv_rows,), "attn_v.bias": (kv_rows,)})
        if arch in ("qwen3", "gemma3"):
            layer.update({"attn_q_norm.weight": (d["head_dim"],), "attn_k_norm.weight": (d["head_dim"],)})
        if arch == "gemma3":
            layer.update(
                {"post_attention_norm.weight": (d["hidden"],), "post_ffw_norm.weight": (d["hidden"],)}
            )
        if arch == "phi3":  # llama.cpp's Phi3MiniModel: q/k/v packed, ffn_up holding gate and up
            unpacked = ("attn_q", "attn_k", "attn_v", "ffn_gate")
            layer = {k: v for k, v in layer.items() if k.split(".")[0] not in unpacked}
            layer["attn_qkv.weight"] = (q_rows + 2 * kv_rows, d["hidden"])
            layer["ffn_up.weight"] = (2 * d["ffn"], d["hidden"])
        shapes += [(f"blk.{i}.{name}", shape) for name, shape in layer.items()]
    return shapes


def _add_random_tensor(
    writer: gguf.GGUFWriter, rng: np.random.Generator, name: str, shape: tuple[int, ...]
) -> None:
    values = rng.standard_normal(shape).astype(np.float32)
    if "norm" in name:
        values = 1.0 + 0.1 * values
    if len(shape) == 1:
        writer.add_tensor(name, values)  # llama.cpp keeps vectors in F32
    elif name.endswith(("attn_q.weight", "ffn_up.weight")):
        writer.add_tensor(name, values.astype(np.float16))
    elif name.endswith(("attn_k.weight", "ffn_gate.weight", "token_embd.weight")):
        writer.add_tensor(name, gguf.quants.quantize(values, Q.Q8_0), raw_dtype=Q.Q8_0)
    else:
        writer.add_tensor(name, gguf.quants.quantize(values, Q.BF16), raw_dtype=Q.BF16)


def _transformers_state_dict(directory: str, name: str) -> dict[str, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model.state_dict()


def _assert_state_dict_matches(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], tied: bool
) -> None:
    expected = {k: v for k, v in theirs.items() if not (tied and k == "lm_head.weight")}
    assert sorted(ours) == sorted(expected)
    for key, tensor in ours.items():
        assert tensor.shape == expected[key].shape, key
        torch.testing.assert_close(tensor.float(), expected[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("arch", "tied"), [("llama", False), ("qwen2", True), ("qwen3", True), ("gemma3", True), ("phi3", False)]
)
def test_tiny_model_weights_match_transformers(arch, tied, tmp_path):
    path = write_tiny_model(tmp_path / f"{arch}.gguf", arch, tied=tied)
    f = GGUFFile(path)
    hf_config = gguf_hf_config(f)
    assert hf_config["tie_word_embeddings"] == tied
    assert hf_config["attention_bias"] == (arch == "qwen2")
    ours = dict(gguf_state_dict(f, config_from_hf_dict(hf_config)))
    _assert_state_dict_matches(ours, _transformers_state_dict(str(tmp_path), path.name), tied)


def test_untransformed_half_tensors_stay_zero_copy(tmp_path):
    path = write_tiny_model(tmp_path / "qwen2.gguf", "qwen2")
    f = GGUFFile(path)
    weights = dict(gguf_state_dict(f, _model_config(f)))
    q_proj = weights["model.layers.0.self_attn.q_proj.weight"]  # F16 in the file, no transform for qwen2
    assert q_proj.dtype == torch.float16
    assert q_proj.data_ptr() == f.raw("blk.0.attn_q.weight").ctypes.data
    assert weights["model.layers.0.self_attn.o_proj.weight"].dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2_gguf", "gemma3_gguf"])
def test_real_model_weights_match_transformers(model, request, oracle_reader, hf_gguf_location):
    """llama q/k un-permutation (SmolLM2) and Gemma's norm - 1, on every tensor of the real files."""
    path = request.getfixturevalue(model)
    theirs = _transformers_state_dict(*hf_gguf_location(path))
    f = GGUFFile(path)
    config = _model_config(f)
    ours = dict(gguf_state_dict(f, config))
    _assert_state_dict_matches(ours, theirs, config.tie_word_embeddings)


# Families in GGUF: the family case of tests/families.py, its module, llama.cpp's architecture.
GGUF_FAMILIES = {
    "llama": (llama, gguf.MODEL_ARCH.LLAMA), "qwen2": (qwen2, gguf.MODEL_ARCH.QWEN2),
    "qwen3": (qwen3, gguf.MODEL_ARCH.QWEN3), "gemma3": (gemma3, gguf.MODEL_ARCH.GEMMA3),
    "phi3": (phi3, gguf.MODEL_ARCH.PHI3),
}


@pytest.mark.parametrize("case", list(GGUF_FAMILIES))
def test_name_table_inverts_the_converters_map(case):
    """Every HF parameter, named as llama.cpp's converter names it (gguf-py `TensorNameMap`), reads
    back to itself through the family's table."""
    transformers = pytest.importorskip("transformers")
    module, arch = GGUF_FAMILIES[case]
    hf_config = FAMILIES[case](transformers, **TINY_HF)
    with torch.device("meta"):
        names = list(transformers.AutoModelForCausalLM.from_config(hf_config).state_dict())
    converter = gguf.get_tensor_name_map(arch, hf_config.num_hidden_layers)
    for hf_name in names:
        gguf_name = converter.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert module.FAMILY.gguf.hf_name(gguf_name) == hf_name, gguf_name


def test_name_table_errors():
    assert llama.FAMILY.gguf.hf_name("rope_freqs.weight") is None  # read into the config
    with pytest.raises(UnsupportedArchitectureError, match="blk.0.ffn_gate_exps.weight.*qwen3"):
        qwen3.FAMILY.gguf.hf_name("blk.0.ffn_gate_exps.weight")


def test_dequantizing_into_bf16_by_slabs_equals_whole_tensor_cast(smollm2_gguf):
    f = GGUFFile(smollm2_gguf)
    name = "token_embd.weight"  # Q4_1, 49152 rows: several slabs
    assert f.tensors[name].is_quantized
    slabs = f.torch_tensor(name, torch.bfloat16)
    whole = torch.from_numpy(f.dequantize(name)).to(torch.bfloat16)
    assert slabs.dtype == torch.bfloat16 and torch.equal(slabs, whole)


# -- phi3: llama.cpp's Phi3MiniModel layout, with LongRoPE and sliding window ------------------------

PHI3_CASES = ["phi3", "phi3-window", "phi3-longrope", "phi3-longrope-partial"]


def write_phi3_gguf(path: Path, model: Any) -> Path:
    """`model` as llama.cpp's converter writes it (convert_hf_to_gguf.py, `Phi3MiniModel`): its
    metadata keys, the packed qkv / gate_up under gguf-py's names, LongRoPE factors as tensors."""
    cfg, rope = model.config, model.config.rope_parameters
    rope_dims = int(rope.get("partial_rotary_factor", 1.0) * cfg.hidden_size) // cfg.num_attention_heads
    original = rope.get("original_max_position_embeddings", cfg.original_max_position_embeddings)
    writer = gguf.GGUFWriter(path, "phi3")
    for add, value in ((writer.add_context_length, cfg.max_position_embeddings),
                       (writer.add_rope_scaling_orig_ctx_len, original),
                       (writer.add_embedding_length, cfg.hidden_size),
                       (writer.add_feed_forward_length, cfg.intermediate_size),
                       (writer.add_block_count, cfg.num_hidden_layers),
                       (writer.add_head_count, cfg.num_attention_heads),
                       (writer.add_head_count_kv, cfg.num_key_value_heads),
                       (writer.add_layer_norm_rms_eps, cfg.rms_norm_eps),
                       (writer.add_rope_dimension_count, rope_dims),
                       (writer.add_rope_freq_base, rope["rope_theta"]),
                       (writer.add_sliding_window, cfg.sliding_window or 0)):  # fmt: skip
        add(value)
    _add_tiny_vocab(writer, cfg.vocab_size, bos=cfg.bos_token_id, eos=cfg.eos_token_id)
    if rope.get("long_factor"):
        scale = cfg.max_position_embeddings / original
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
        writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        values = tensor.numpy()
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        writer.add_tensor(gguf_name, values if values.ndim == 1 else values.astype(np.float16))
    _finish(writer)
    return path


def _phi3_source_model(case: str) -> Any:
    """A tiny random transformers Phi 3 whose matrices are F16 values, so that the F16 GGUF written
    from it holds its weights exactly and it is the oracle for what Luodi reads back."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = FAMILIES[case](transformers, **TINY_HF, initializer_range=0.2)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(param.half().float())
    return model


@pytest.fixture(scope="module", params=PHI3_CASES)
def phi3_gguf(request, tmp_path_factory):
    """(case, the transformers model, the GGUF written from it)."""
    model = _phi3_source_model(request.param)
    return request.param, model, write_phi3_gguf(tmp_path_factory.mktemp(request.param) / "phi3.gguf", model)


def test_phi3_config_matches_the_source_model(phi3_gguf):
    """Everything the HF config states comes back from the metadata and the LongRoPE tensors;
    the attention factor the file carries is the one transformers computes."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    case, model, path = phi3_gguf
    config = _model_config(GGUFFile(path))
    scaling = dict(config.rope_scaling or {})
    attention_factor = scaling.pop("attention_factor", None)
    assert replace(config, rope_scaling=scaling or None) == config_from_hf_dict(model.config.to_dict())
    if "longrope" in case:
        _, expected = ROPE_INIT_FUNCTIONS["longrope"](model.config, "cpu")
        assert attention_factor == pytest.approx(expected, rel=1e-6)


def test_phi3_longrope_needs_both_factor_tensors(tmp_path):
    path = write_tiny_model(tmp_path / "phi3.gguf", "phi3", tied=False, extra=lambda w: w.add_tensor(
        "rope_factors_long.weight", np.ones(TINY["head_dim"] // 2, np.float32)))  # fmt: skip
    with pytest.raises(ModelFormatError, match="lacks rope_factors_short.weight"):
        _model_config(GGUFFile(path))


def _luodi_model(path: Path) -> torch.nn.Module:
    config, weights, _ = load_config_and_weights(path)
    return build_model(config, weights, dtype=torch.float32, device=torch.device("cpu"))


def test_phi3_logits_and_greedy_tokens_match_the_source_model(phi3_gguf):
    """The oracle is the model the GGUF was written from: transformers' GGUF loader reads neither
    LongRoPE (rope_factors_*, original context), nor partial rotary, nor the sliding window of a
    phi3 file (its `integrations/ggml.py` maps none of those keys)."""
    case, model, path = phi3_gguf
    ours = _luodi_model(path)
    _assert_logits_match(ours, model, length=LONGROPE_ORIGINAL + 8)
    _assert_greedy_tokens_match(ours, model, length=LONGROPE_ORIGINAL + 8 if "longrope" in case else 12)


def test_phi3_gguf_matches_transformers_loading_it(tmp_path):
    """A plain phi3 file (no LongRoPE, no window, full rotary) as transformers reads the same GGUF:
    the same weights, the same logits and greedy tokens."""
    transformers = pytest.importorskip("transformers")
    path = write_phi3_gguf(tmp_path / "phi3.gguf", _phi3_source_model("phi3"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    f = GGUFFile(path)
    _assert_state_dict_matches(dict(gguf_state_dict(f, _model_config(f))), theirs.state_dict(), tied=False)
    ours = _luodi_model(path)
    _assert_logits_match(ours, theirs, length=40)
    _assert_greedy_tokens_match(ours, theirs, length=12)


def _assert_logits_match(ours: torch.nn.Module, theirs: Any, length: int) -> None:
    """fp32 logits within 1e-4, as tests/models/test_families.py holds every family."""
    ids = torch.randint(0, TINY_HF["vocab_size"], (length,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = theirs(ids[None]).logits[0]
    assert (full_logits(ours, ids.tolist()) - ref).abs().max().item() < 1e-4


def _assert_greedy_tokens_match(ours: torch.nn.Module, theirs: Any, length: int) -> None:
    prompt = torch.randint(0, TINY_HF["vocab_size"], (length,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # An explicit mask: a tiny vocabulary's prompt holds the pad id, which generate would mask.
        out = theirs.generate(prompt[None], attention_mask=torch.ones(1, length, dtype=torch.long),
                              max_new_tokens=16, do_sample=False, output_logits=True,
                              return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    engine = LLMEngine(ours, config=EngineConfig(block_size=4))
    [got] = engine.generate([prompt.tolist()], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    assert_greedy_match(got, out.sequences[0, length:].tolist(), torch.cat(out.logits))
