"""Streaming text: incremental detokenization and stop-string matching.

Owns: turning a growing list of token ids into text deltas that never end in half a UTF-8
character, and holding back text that might be the start of a stop string.

Must not know: which tokenizer library is used (anything with `decode(ids, skip_special_tokens)`
will do), requests, sampling or the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Decoder", "IncrementalDetokenizer", "StopChecker", "StopMatch", "find_stop", "held_back_length"]

# How many prompt tokens give the first output token its context (a leading space, say), as
# vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET.
_PROMPT_CONTEXT_TOKENS = 5
# One UTF-8 character spans at most 4 bytes, so at most 4 tokens; a tail still unfinished after
# this many tokens is invalid bytes from the model, emitted as U+FFFD rather than held forever.
_MAX_PENDING_TOKENS = 8
_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """A tokenizer as the detokenizer sees it; `tokenizers.Tokenizer` fits."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Text deltas for output tokens, one token at a time, at O(window) cost per token.

    Keeps two offsets into the token list, as vLLM's `detokenize_incrementally`: text decoded
    from `[prefix_offset, read_offset)` has already been emitted; the delta is what decoding
    `[prefix_offset, end)` adds to it. Decoding with a few tokens of context keeps leading spaces
    and merges right. A delta ending in U+FFFD is an unfinished UTF-8 character: wait for more.

    Contract: the concatenation of every `push` and the final `flush` equals the text the whole
    sequence decodes to after the prompt — for byte-level BPE `decode(output_ids)` — less the
    bytes of a character left unfinished at the end.
    """

    def __init__(self, tokenizer: Decoder, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final (often "")."""
        self._ids.append(token_id)
        force = len(self._ids) - self._read_offset >= _MAX_PENDING_TOKENS
        return self._advance(force=force)

    def flush(self) -> str:
        """Return whatever is still held back, less a character cut unfinished at the end.

        Generation can stop (max_tokens, a stop id) inside a multi-byte character; its first bytes
        decode to U+FFFD, which is dropped (text the same token began with is kept), so the last
        streamed piece and the whole text agree and never end in U+FFFD. (A complete U+FFFD the
        model wrote as its last character cannot be told from a cut one and is dropped too.)
        """
        return self._advance(force=True).rstrip(_REPLACEMENT)

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip_special_tokens)

    def _advance(self, force: bool) -> str:
        if self._read_offset >= len(self._ids):
            return ""
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset, len(self._ids))
        if len(new_text) <= len(prefix_text) and not force:
            return ""  # e.g. a skipped special token: nothing visible yet
        if new_text.endswith(_REPLACEMENT) and not force:
            return ""
        delta = new_text[len(prefix_text) :]
        # Drop emitted tokens from the window; keep the last read ones as context.
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._compact()
        return delta

    def _compact(self) -> None:
        """Forget tokens before the window so memory stays O(window), not O(output)."""
        if self._prefix_offset > 0:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0


# ---------------------------------------------------------------------------------------------
# Stop strings


@dataclass(frozen=True, slots=True)
class StopMatch:
    index: int  # where the stop string starts in the searched text
    stop: str


def find_stop(text: str, stop: tuple[str, ...], start: int = 0) -> StopMatch | None:
    """The earliest occurrence at or after `start` of any stop string (longest on a tie)."""
    best: StopMatch | None = None
    for s in stop:
        index = text.find(s, start)
        if index >= 0 and (best is None or (index, -len(s)) < (best.index, -len(best.stop))):
            best = StopMatch(index, s)
    return best


def held_back_length(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = min(len(text), max((len(s) for s in stop), default=1) - 1)
    for length in range(longest, 0, -1):
        tail = text[-length:]
        if any(s.startswith(tail) for s in stop):
            return length
    return 0


class StopChecker:
    """Streams text through stop strings.

    Contract: `push(delta)` returns text safe to show now. It never returns any character of a
    stop string occurrence: text that could still become the start of a stop string is held
    back until it either completes one (then `stopped` is True, `matched` names it, and the
    text before it is the last output) or can no longer do so. Once stopped, pushes return "".
    The text returned in total equals the text pushed so far cut before the earliest stop string
    it contains. Call `flush()` when generation ends for another reason to release the held
    tail. Cost per push is O(len(delta) + longest stop string).
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = tuple(stop)
        self._pending = ""  # held-back tail, shorter than the longest stop string
        self.stopped = False
        self.matched: str | None = None

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self._stop:
            return delta
        text = self._pending + delta
        match = find_stop(text, self._stop)
        if match is not None:
            self.stopped, self.matched, self._pending = True, match.stop, ""
            return text[: match.index]
        held = held_back_length(text, self._stop)
        self._pending = text[len(text) - held :]
        return text[: len(text) - held]

    def flush(self) -> str:
        """Release the held tail (generation ended without completing a stop string)."""
        tail, self._pending = self._pending, ""
        return "" if self.stopped else tail
