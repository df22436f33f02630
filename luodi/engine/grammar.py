"""Constrained decoding seams: what a request's grammar is, and what the engine needs of a matcher.

Owns: `GrammarSpec` (the grammar a request carries in its `SamplingParams`), the `GrammarMatcher`
and `GrammarBackend` Protocols (llguidance implements them in `luodi.structured`; xgrammar could
stand in), the token bitmask layout ([rows, ceil(V / 32)] int32, bit `t % 32` of word `t // 32`
set = token `t` allowed, the layout llguidance and xgrammar share), applying such masks to logits,
and advancing a request's matcher by the tokens it sampled plus the tokens the grammar then
forces (fast-forward: they join the request's output and are computed by the next step's
multi-token chunk, the path prompt chunks take, so they cost no decode step each).

Must not know: tokenizers, text, the model, HTTP. A backend is built by the composition root from
the tokenizer and handed to the engine; the engine only compiles specs through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch

from luodi.errors import InvalidParameterError

GrammarKind = Literal["json_schema", "json_object", "regex", "choice", "lark"]
GRAMMAR_KINDS: tuple[str, ...] = ("json_schema", "json_object", "regex", "choice", "lark")


class GrammarError(InvalidParameterError):
    """A grammar that cannot be compiled: invalid, unsupported, too large, or too slow to compile."""


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """A request's grammar as text: a JSON Schema (JSON text), a regex, a Lark grammar, or for
    `choice` a JSON array of the allowed strings; `json_object` ignores `text` (any JSON object).

    `param` names the client's field the grammar came from, for error messages.
    """

    kind: GrammarKind
    text: str = ""
    param: str = "response_format"

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise GrammarError(
                f"grammar kind {self.kind!r} is unknown; use one of {', '.join(GRAMMAR_KINDS)}", param=self.param
            )
        if not isinstance(self.text, str):
            raise GrammarError(f"the {self.kind} grammar must be text, got {type(self.text).__name__}",
                               param=self.param)


class GrammarMatcher(Protocol):
    """One request's position in its grammar. Tokens are model token ids."""

    def fill_mask(self, bitmask_row: torch.Tensor) -> None:
        """Write the allowed next tokens into `bitmask_row` (int32 [ceil(V / 32)], contiguous)."""

    def accept(self, token_ids: Sequence[int]) -> bool:
        """Advance by `token_ids`; False if the grammar rejects one (the matcher is then in error)."""

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next, whatever the model would prefer (may be empty)."""

    def is_finished(self) -> bool:
        """True when the grammar is complete and allows nothing but end-of-sequence."""

    def is_accepting(self) -> bool:
        """True when the text so far is a complete match (end-of-sequence is allowed)."""

    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens (for speculative drafts the model rejects)."""

    def num_valid(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of `token_ids` the grammar allows from here (state unchanged)."""


class GrammarBackend(Protocol):
    """Compiles specs into matchers for one tokenizer; raises `GrammarError` naming the problem."""

    @property
    def vocab_size(self) -> int: ...

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher: ...


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def new_bitmask(num_rows: int, vocab_size: int) -> torch.Tensor:
    """All tokens allowed: [num_rows, ceil(V / 32)] int32 of -1."""
    return torch.full((num_rows, bitmask_width(vocab_size)), -1, dtype=torch.int32)


def allowed_tokens(bitmask_row: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The bool [V] of allowed tokens a bitmask row encodes (little-endian bits within each word)."""
    as_bytes = bitmask_row.contiguous().numpy().view(np.uint8)
    bits = np.unpackbits(as_bytes, bitorder="little")[:vocab_size]
    return torch.from_numpy(bits.view(np.bool_))


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> dict[int, int]:
    """In place: logits [B, V] of disallowed tokens -> -inf, for the given rows of the batch.

    `bitmask` has one row per entry of `rows`. Columns past the mask's width (a model vocab
    padded beyond the tokenizer's) are disallowed. Returns {row: token} for the rows whose mask
    allows one token only: that token is forced, and sampling it needs no draw.
    """
    vocab_size = logits.shape[-1]
    forced: dict[int, int] = {}
    for mask_row, row in enumerate(rows):
        allowed = allowed_tokens(bitmask[mask_row], vocab_size)
        width = allowed.numel()
        logits[row, :width].masked_fill_(~allowed, float("-inf"))
        if width < vocab_size:
            logits[row, width:] = float("-inf")
        if int(allowed.sum()) == 1:
            forced[row] = int(allowed.nonzero())
    return forced
