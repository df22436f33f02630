"""The bundled texts quantization is calibrated on and judged by, and how token ids become windows.

Owns: the two package-data texts — `calibration.txt` (~24 KB) and `heldout.txt` (~16 KB), each
written for this project, about half English and half Chinese by bytes, in many registers
(explanations, stories, dialogue, instructions, meeting notes, lists, a little code) and sharing
no sentence — and cutting a token sequence into fixed-length windows. Quantization is never
calibrated on the held-out text.

Must not know: models, tokenizers (windows are cut from ids), how windows are scored.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from luodi.errors import InvalidParameterError

_DATA_PACKAGE = "luodi.quant_tools"
CALIBRATION_FILE = "data/calibration.txt"
HELDOUT_FILE = "data/heldout.txt"
# A window of one token has nothing to predict from: keep a trailing partial window only from 2.
_MIN_WINDOW_TOKENS = 2


@cache
def _read_text(relative_path: str) -> str:
    # importlib.resources, not a path beside __file__, so the texts load from a wheel or zip too.
    return resources.files(_DATA_PACKAGE).joinpath(relative_path).read_text(encoding="utf-8")


def calibration_text() -> str:
    """The calibration text: what SmoothQuant and AWQ statistics are gathered on."""
    return _read_text(CALIBRATION_FILE)


def heldout_text() -> str:
    """The evaluation text: perplexity and greedy agreement are measured on it, never calibrated on it."""
    return _read_text(HELDOUT_FILE)


def token_windows(token_ids: list[int], seq_len: int, max_windows: int | None = None) -> list[list[int]]:
    """Consecutive, non-overlapping windows of `seq_len` ids, in order; a trailing partial window is
    kept if it holds at least 2 ids. `max_windows` keeps only the first that many (None: all)."""
    if seq_len < _MIN_WINDOW_TOKENS:
        raise InvalidParameterError(
            f"seq_len={seq_len} is too short; a window needs at least {_MIN_WINDOW_TOKENS} tokens",
            param="seq_len",
        )
    if max_windows is not None and max_windows < 1:
        raise InvalidParameterError(
            f"max_windows={max_windows} must be at least 1, or None for every window", param="max_windows"
        )
    windows = [list(token_ids[start:start + seq_len]) for start in range(0, len(token_ids), seq_len)]
    if windows and len(windows[-1]) < _MIN_WINDOW_TOKENS:
        windows.pop()
    return windows if max_windows is None else windows[:max_windows]
