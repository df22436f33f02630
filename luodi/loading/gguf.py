"""GGUF files: a fast memory-mapped reader, and what every architecture states alike in one.

Owns: parsing a GGUF header (metadata and tensor table) in bulk, handing out tensors as zero-copy
views or dequantized float32 (through `gguf.quants`), yielding them as (GGUF name, tensor) pairs
untouched, and the HF `config.json` keys every architecture's `{arch}.*` metadata gives alike.
Must not know: any model family. Which family an architecture is, its tensor-name table, the
converter transforms to undo (llama's q/k permutation, Gemma's `norm + 1`) and its own metadata
(Gemma's sliding pattern, Phi 3's LongRoPE factors) live in the family files, which build on
`luodi.models.gguf_spec`; `luodi.models.gguf_load` puts them together. Nor: tokenization,
`ModelConfig`, devices.

Format reference: ggml `docs/gguf.md`; gguf-py `gguf_reader.py` is the oracle in the tests.
`gguf.GGUFReader` is not used here: it walks every array element in Python, 10+ s on Gemma 3's
262k-token vocabulary, where this reader takes a fraction of a second.
"""
from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from luodi.errors import ModelFormatError, ModelNotFoundError, UnsupportedArchitectureError

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types (ggml docs/gguf.md, `gguf_metadata_value_type`) -> numpy dtype.
_NUMERIC_TYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<u1"),
    1: np.dtype("<i1"),
    2: np.dtype("<u2"),
    3: np.dtype("<i2"),
    4: np.dtype("<u4"),
    5: np.dtype("<i4"),
    6: np.dtype("<f4"),
    7: np.dtype("?"),
    10: np.dtype("<u8"),
    11: np.dtype("<i8"),
    12: np.dtype("<f8"),
}
_STRING, _ARRAY = 8, 9

# Tensor types stored as plain values, viewable without dequantization.
_FLOAT_TORCH = {
    GGMLQuantizationType.F32: torch.float32,
    GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16,
}
_PLAIN_NUMPY = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a GGUF file: shape in torch order ([rows, cols], ggml's `ne` reversed),
    storage type, absolute byte offset in the file, and size in bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int
    n_bytes: int

    @property
    def is_quantized(self) -> bool:
        return self.ggml_type not in _PLAIN_NUMPY and self.ggml_type != GGMLQuantizationType.BF16


class _Cursor:
    """Reads little-endian GGUF values from a buffer, raising `ModelFormatError` past its end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise ModelFormatError(
                f"{self.path} is truncated: its header needs byte {self.pos + n} but the file has "
                f"{len(self.buf)} bytes; re-download it (`luodi pull NAME` for catalog models)"
            )

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        self._need(size)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        self._need(length)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{self.path} has a string that is not UTF-8 at byte {self.pos}") from exc

    def numeric_array(self, dtype: np.dtype[Any], count: int) -> np.ndarray:
        self._need(count * dtype.itemsize)
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        return arr

    def string_array(self, count: int) -> list[str]:
        # One pass over the lengths with struct, slicing one bytes object: ~0.1 s for 262k strings.
        buf, pos, out = self.buf, self.pos, []
        size = len(buf)
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                self._need(8)
            (length,) = unpack(buf, pos)
            pos += 8
            out.append(bytes(buf[pos : pos + length]))
            pos += length
        self.pos = pos
        self._need(0)
        try:
            return [b.decode("utf-8") for b in out]
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{self.path} has a string array that is not UTF-8") from exc

    def value(self, value_type: int) -> Any:
        if value_type in _NUMERIC_TYPES:
            dtype = _NUMERIC_TYPES[value_type]
            return self.numeric_array(dtype, 1)[0].item()
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.unpack("<IQ")
            if item_type in _NUMERIC_TYPES:
                return self.numeric_array(_NUMERIC_TYPES[item_type], count)
            if item_type == _STRING:
                return self.string_array(count)
            return [self.value(item_type) for _ in range(count)]
        raise ModelFormatError(
            f"{self.path} has metadata of unknown value type {value_type} at byte {self.pos}"
        )


class GGUFFile:
    """A memory-mapped GGUF file: `metadata`, `tensors`, and tensor data on demand.

    The file is mapped copy-on-write: tensors handed out are writable views that cost no copy and
    never modify the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelNotFoundError(
                f"GGUF file {self.path} does not exist; check the path or `luodi pull NAME`"
            )
        try:
            with open(self.path, "rb") as fh:
                self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        except ValueError as exc:  # mmap refuses an empty file
            raise ModelFormatError(f"{self.path} is empty, not a GGUF file; re-download it") from exc
        self._data = np.frombuffer(self._mmap, dtype=np.uint8)
        cursor = _Cursor(self._data.data, self.path)
        self.version, n_tensors, n_kv = self._read_preamble(cursor)
        self.metadata: dict[str, Any] = self._read_metadata(cursor, n_kv)
        alignment = self._alignment()
        infos = [self._read_tensor_info(cursor) for _ in range(n_tensors)]
        self.data_offset = -(-cursor.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, type_id, rel_offset in infos:
            self._add_tensor(name, dims, type_id, self.data_offset + rel_offset)

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, {len(self.tensors)} tensors)"

    def _read_preamble(self, cursor: _Cursor) -> tuple[int, int, int]:
        if len(cursor.buf) < 4 or bytes(cursor.buf[:4]) != GGUF_MAGIC:
            head = bytes(cursor.buf[:4])
            raise ModelFormatError(
                f"{self.path} is not a GGUF file: it starts with {head!r}, not b'GGUF'; "
                "pass a .gguf file or an HF model directory"
            )
        cursor.pos = 4
        (version,) = cursor.unpack("<I")
        if version & 0xFFFF == 0:
            raise ModelFormatError(
                f"{self.path} is a big-endian GGUF; only little-endian files are supported"
            )
        if version not in SUPPORTED_VERSIONS:
            raise ModelFormatError(
                f"{self.path} is GGUF version {version}; supported versions are {SUPPORTED_VERSIONS}. "
                "Re-convert it with a current llama.cpp"
            )
        n_tensors, n_kv = cursor.unpack("<QQ")
        return version, n_tensors, n_kv

    def _read_metadata(self, cursor: _Cursor, n_kv: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cursor.string()
            (value_type,) = cursor.unpack("<I")
            if key in metadata:
                raise ModelFormatError(f"{self.path} has the metadata key {key!r} twice")
            metadata[key] = cursor.value(value_type)
        return metadata

    def _alignment(self) -> int:
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ModelFormatError(
                f"{self.path} has general.alignment={alignment!r}; it must be a power of two"
            )
        return alignment

    @staticmethod
    def _read_tensor_info(cursor: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
        name = cursor.string()
        (n_dims,) = cursor.unpack("<I")
        dims = cursor.unpack(f"<{n_dims}Q")
        type_id, offset = cursor.unpack("<IQ")
        return name, tuple(dims), type_id, offset

    def _add_tensor(self, name: str, dims: tuple[int, ...], type_id: int, offset: int) -> None:
        try:
            ggml_type = GGMLQuantizationType(type_id)
        except ValueError:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} has unknown ggml type id {type_id}; "
                "the file is corrupt or needs a newer `gguf` package"
            ) from None
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        n_elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if dims and dims[0] % block_size:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} has rows of {dims[0]} values, not a multiple of the "
                f"{ggml_type.name} block size {block_size}; the file is corrupt"
            )
        n_bytes = n_elements // block_size * type_size
        end, size = offset + n_bytes, len(self._data)
        if end > size:
            raise ModelFormatError(
                f"{self.path} is truncated: tensor {name} ends at byte {end} but the file has {size} bytes; "
                "re-download it with `luodi pull NAME`"
            )
        if name in self.tensors:
            raise ModelFormatError(f"{self.path} has the tensor {name!r} twice")
        self.tensors[name] = TensorInfo(name, tuple(reversed(dims)), ggml_type, offset, n_bytes)

    # -- tensor data ---------------------------------------------------------------------------

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes, as a flat uint8 view of the mapped file (no copy)."""
        info = self._info(name)
        return self._data[info.offset : info.offset + info.n_bytes]

    def release(self, name: str) -> None:
        """Drop the tensor's file pages from memory once it has been converted.

        The mapping is private and its pages unmodified, so a later read simply faults them back
        in from the file; meanwhile they no longer count against the process while the model
        loads (an F16 file converted to bf16 would otherwise hold both copies at the peak).
        """
        info = self._info(name)
        page = mmap.PAGESIZE
        start = -(-info.offset // page) * page
        end = (info.offset + info.n_bytes) // page * page
        if end > start:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32 in torch shape; a zero-copy view for F32 tensors."""
        info = self._info(name)
        raw = self.raw(name)
        if info.ggml_type in _PLAIN_NUMPY:
            values = raw.view(_PLAIN_NUMPY[info.ggml_type]).reshape(info.shape)
            return values if values.dtype == np.float32 else values.astype(np.float32)
        byte_shape = gguf.quant_shape_to_byte_shape(info.shape, info.ggml_type)
        try:
            values = gguf.quants.dequantize(raw.reshape(byte_shape), info.ggml_type)
        except NotImplementedError:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} is {info.ggml_type.name}, which the installed `gguf` package "
                "cannot dequantize; upgrade `gguf` or use a Q4_K_M / Q8_0 file of the model"
            ) from None
        return values.astype(np.float32, copy=False).reshape(info.shape)

    def torch_tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor for torch: F32/F16/BF16 as zero-copy views in their own dtype, others float32.

        With `dtype`, a quantized tensor is dequantized straight into that dtype, a slab of rows
        at a time, so no full float32 copy exists (Gemma's 262k-row embedding would be 671 MB).
        """
        info = self._info(name)
        if info.ggml_type in _FLOAT_TORCH:
            raw = torch.from_numpy(self.raw(name))
            return raw.view(_FLOAT_TORCH[info.ggml_type]).reshape(info.shape)
        if dtype is None or dtype == torch.float32 or len(info.shape) != 2:
            return torch.from_numpy(self.dequantize(name))
        return self._dequantize_rows(info, dtype)

    def _dequantize_rows(self, info: TensorInfo, dtype: torch.dtype) -> torch.Tensor:
        rows, cols = info.shape
        byte_rows = self.raw(info.name).reshape(gguf.quant_shape_to_byte_shape(info.shape, info.ggml_type))
        out = torch.empty(rows, cols, dtype=dtype)
        step = max(1, _DEQUANT_SLAB_ELEMENTS // cols)
        for start in range(0, rows, step):
            slab = gguf.quants.dequantize(byte_rows[start : start + step], info.ggml_type)
            out[start : start + step] = torch.from_numpy(slab.astype(np.float32, copy=False))
        return out


# Rows of a quantized tensor dequantized at once when converting straight to a smaller dtype.
_DEQUANT_SLAB_ELEMENTS = 1 << 22


# -- GGUF metadata -> the common HF config.json keys -----------------------------------------------


def float32_value(value: Any) -> float:
    """A float32 metadata value as the decimal it was written from (9.99e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


class ArchMetadata:
    """A file's `{arch}.KEY` metadata (arch: its `general.architecture`), with an error naming a
    missing key. Family hooks read their own keys through it; `f` is the file, for its tensors."""

    def __init__(self, f: GGUFFile) -> None:
        self.f = f
        self.arch = f.metadata.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.f.metadata.get(f"{self.arch}.{key}", default)

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ModelFormatError(
                f"{self.f.path} lacks the metadata key {self.arch}.{key}; is it a complete GGUF?"
            )
        return value


def gguf_common_config(meta: ArchMetadata) -> dict[str, Any]:
    """The HF `config.json` keys (transformers' names) that every architecture states alike in its
    `{arch}.*` metadata and tensor table. The family's GGUF hook adds `model_type` and its own keys
    (`luodi.models.gguf_load`)."""
    f = meta.f
    hidden = int(meta.require("embedding_length"))
    num_heads = int(meta.require("attention.head_count"))
    head_dim = meta.get("attention.key_length") or meta.get("rope.dimension_count") or hidden // num_heads
    return {
        "vocab_size": _vocab_size(meta),
        "hidden_size": hidden,
        "intermediate_size": int(meta.require("feed_forward_length")),
        "num_hidden_layers": int(meta.require("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": _num_kv_heads(meta, num_heads),
        "head_dim": int(head_dim),
        "rms_norm_eps": float32_value(meta.get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float32_value(meta.get("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(meta),
        "max_position_embeddings": int(meta.get("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "attention_bias": "blk.0.attn_q.bias" in f.tensors,
        "hidden_act": "silu",
        "bos_token_id": f.metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": list(gguf_eos_token_ids(f)),
    }


def _vocab_size(meta: ArchMetadata) -> int:
    f = meta.f
    tokens = f.metadata.get("tokenizer.ggml.tokens")
    if tokens is not None:
        return len(tokens)
    if meta.get("vocab_size") is not None:
        return int(meta.get("vocab_size"))
    if "token_embd.weight" in f.tensors:
        return int(f.tensors["token_embd.weight"].shape[0])
    raise ModelFormatError(f"{f.path} states no vocabulary size (no token list, no token_embd.weight)")


def _num_kv_heads(meta: ArchMetadata, num_heads: int) -> int:
    value = meta.get("attention.head_count_kv", num_heads)
    if isinstance(value, np.ndarray):  # per-layer counts (some hybrid models): all equal here
        values = set(value.tolist())
        if len(values) != 1:
            raise UnsupportedArchitectureError(
                f"{meta.f.path} has per-layer KV head counts {sorted(values)}; "
                "Luodi needs one count for all layers"
            )
        return int(values.pop())
    return int(value)


def _rope_scaling(meta: ArchMetadata) -> dict[str, Any] | None:
    """HF's rope_scaling from the `rope.scaling.*` keys; scalings stored as tensors (Llama 3's
    rope_freqs, Phi 3's LongRoPE factors) are read by their family's GGUF hook."""
    kind = meta.get("rope.scaling.type")
    factor = meta.get("rope.scaling.factor") or meta.get("rope.scale_linear")
    if kind is None and meta.get("rope.scale_linear") is not None:
        kind = "linear"  # old files state only rope.scale_linear
    if kind in (None, "none") or not factor or float(factor) == 1.0:
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": float32_value(factor)}
    original = meta.get("rope.scaling.original_context_length")
    if original:
        scaling["original_max_position_embeddings"] = int(original)
    for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
        if meta.get(f"rope.scaling.{gguf_key}") is not None:
            scaling[hf_key] = float32_value(meta.get(f"rope.scaling.{gguf_key}"))
    if meta.get("rope.scaling.attn_factor") is not None:
        scaling["attention_factor"] = float32_value(meta.get("rope.scaling.attn_factor"))
    return scaling


def gguf_eos_token_ids(f: GGUFFile) -> tuple[int, ...]:
    """Token ids that end generation by the `tokenizer.ggml.*` keys: EOS, then EOT. A family may name
    more in its config (Gemma's <end_of_turn>, `luodi.models.gemma3`)."""
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        value = f.metadata.get(key)
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return tuple(ids)


# -- GGUF tensors -------------------------------------------------------------------------------


def gguf_tensors(f: GGUFFile, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for every tensor, untouched: `torch_tensor`'s zero-copy views or float32
    (quantized ones in `dtype` if given). Names and llama.cpp's converter transforms are undone by
    the family (`luodi.models.gguf_load`).

    Each tensor's file pages are released once the consumer asks for the next one: it has
    converted the tensor by then, and a big file is never held twice.
    """
    for name in f.tensors:
        yield name, f.torch_tensor(name, dtype)
        f.release(name)
