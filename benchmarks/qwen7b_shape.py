"""A 7B-class model of random INT4 weights for decode speed: Qwen2.5-7B's shape, both engines' files.

Qwen2.5-7B: hidden 3584, 28 layers, 28 query heads / 4 KV heads (head 128), FFN 18944, vocabulary
152064, untied head, q/k/v biases. Speed does not depend on the weight values, and writing the
quantized forms directly skips a 15 GB float model that neither engine would read:

- llama.cpp: a GGUF whose every matrix (the vocabulary table and the head too, as `--pure` would)
  is Q4_0, blocks of 32 with a random nibble per weight and one fp16 scale;
- Luodi: its saved format with every linear layer, the table and the head INT4 g32 (fp16 scale and
  min per group), random nibbles, built from the GGUF's own config and tokenizer so that both
  engines load the same model.

The vocabulary is synthetic (engine_speed's byte-pair vocabulary, grown with byte triples to
152064 tokens): the benchmarks feed token ids, never text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 3584, 28, 28, 4, 18944, 152064
HEAD_DIM = HIDDEN // HEADS
BLOCK = 32  # Q4_0's and Luodi's INT4 group
SCALE = 0.002  # of both engines' random weights: q in 0..15 around a min, activations stay finite


def paths(directory: Path) -> tuple[Path, Path]:
    """(llama.cpp's Q4_0 GGUF, Luodi's INT4 directory), written once into `directory`."""
    gguf_path = directory / "qwen2.5-7b-shape-q4_0.gguf"
    if not gguf_path.exists():
        write_gguf_q4_0(gguf_path)
    luodi_dir = directory / "qwen2.5-7b-shape-int4-g32"
    if not (luodi_dir / "quant.json").exists():
        write_luodi_int4(luodi_dir, gguf_path)
    return gguf_path, luodi_dir


def matrices() -> list[tuple[str, int, int]]:
    """(GGUF name, rows, columns) of every matrix, in the converter's order."""
    kv = KV_HEADS * HEAD_DIM
    out = [("token_embd.weight", VOCAB, HIDDEN), ("output.weight", VOCAB, HIDDEN)]
    for i in range(LAYERS):
        out += [(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN), (f"blk.{i}.attn_k.weight", kv, HIDDEN),
                (f"blk.{i}.attn_v.weight", kv, HIDDEN), (f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN),
                (f"blk.{i}.ffn_gate.weight", FFN, HIDDEN), (f"blk.{i}.ffn_up.weight", FFN, HIDDEN),
                (f"blk.{i}.ffn_down.weight", HIDDEN, FFN)]
    return out


def q4_0_blocks(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """uint8 [rows, cols / 32 * 18]: per block an fp16 scale, then 16 bytes of two nibbles each."""
    blocks = rng.integers(0, 256, (rows, cols // BLOCK, 2 + BLOCK // 2), dtype=np.uint8)
    blocks[..., :2] = np.frombuffer(np.float16(SCALE).tobytes(), dtype=np.uint8)
    return blocks.reshape(rows, -1)


def write_gguf_q4_0(path: Path) -> None:
    import gguf
    from engine_speed import decoder_header
    from rich.progress import track

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    decoder_header(writer, context=32768, hidden=HIDDEN, layers=LAYERS, ffn=FFN, heads=(HEADS, KV_HEADS),
                   eps=1e-6, rope_base=1000000.0, file_type=gguf.LlamaFileType.MOSTLY_Q4_0, vocab=VOCAB)
    for name, rows, cols in track(matrices(), description="random Q4_0 weights (7B shape)"):
        writer.add_tensor(name, q4_0_blocks(rng, rows, cols), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    ones, zeros = np.ones(HIDDEN, dtype=np.float32), np.zeros(KV_HEADS * HEAD_DIM, dtype=np.float32)
    writer.add_tensor("output_norm.weight", ones)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.attn_q.bias", np.zeros(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_k.bias", zeros)
        writer.add_tensor(f"blk.{i}.attn_v.bias", zeros)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()


def write_luodi_int4(out: Path, gguf_path: Path) -> None:
    """Luodi's saved format of the GGUF's model with every matrix INT4 g32 of random nibbles."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from luodi.loading.gguf import GGUFFile
    from luodi.models.config import config_from_hf_dict
    from luodi.models.gguf_load import gguf_hf_config, gguf_tokenizer
    from luodi.models.registry import model_class
    from luodi.quant.format import EMBEDDING, QUANT_FILE, WEIGHTS_FILE, QuantSpec, quantized_structure

    f = GGUFFile(gguf_path)
    hf = gguf_hf_config(f)
    config = config_from_hf_dict(hf)
    with torch.device("meta"):
        model = model_class(config)(config)
    entry = {"scheme": "int4", "group_size": BLOCK, "scale_bits": 16}
    linears = [n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n.startswith("model.layers.")]
    modules = {name: entry for name in [*linears, EMBEDDING, "lm_head"]}
    spec = QuantSpec("int4", modules, options={"scheme": "int4", "group_size": BLOCK, "method": "random"},
                     source=f"random weights of Qwen2.5-7B's shape ({gguf_path.name})")
    quantized_structure(spec, out)(model)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    state = {name: _random_like(name, t, gen) for name, t in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    gguf_tokenizer(f).save(out)
    (out / QUANT_FILE).write_text(spec.to_json(), encoding="utf-8")


def _random_like(name: str, meta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random nibbles for packed weights, SCALE for scales, -8 SCALE for mins (w centred on 0), ones
    for norms and zeros for biases."""
    import torch

    if meta.dtype == torch.uint8:
        return torch.randint(0, 256, meta.shape, dtype=torch.uint8, generator=gen)
    if name.endswith("mins"):
        return torch.full(meta.shape, -8 * SCALE, dtype=meta.dtype)
    if name.endswith("scales"):
        return torch.full(meta.shape, SCALE, dtype=meta.dtype)
    if name.endswith("bias"):
        return torch.zeros(meta.shape, dtype=torch.bfloat16)
    if name.endswith("norm.weight"):
        return torch.ones(meta.shape, dtype=torch.bfloat16)
    raise ValueError(f"no random form for {name} {tuple(meta.shape)} {meta.dtype}")
