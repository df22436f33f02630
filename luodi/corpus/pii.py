"""PII masking: e-mail addresses, phone numbers (Chinese mobile and landline, international),
Chinese resident ID numbers (checksum verified), bank card numbers (Luhn verified).

Owns the patterns, their checks and the placeholders `[EMAIL]`, `[PHONE]`, `[ID_CARD]`,
`[BANK_CARD]`; counts what it masked per kind. ID cards are matched before bank cards and
bank cards before phones, so a long number is masked as the most specific thing it is.
A digit run that fails its checksum is left alone. Knows nothing about other steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from luodi.corpus.document import Document, Drop

PLACEHOLDERS = {"email": "[EMAIL]", "id_card": "[ID_CARD]", "bank_card": "[BANK_CARD]", "phone": "[PHONE]"}

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# GB 11643-1999: 6-digit area, 8-digit birth date, 3-digit sequence, check digit (0-9 or X).
_ID_CARD = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])")
_BANK_CARD = re.compile(r"(?<![\d+-])(?:\d[ -]?){12,18}\d(?![\d-])")
_PHONE = re.compile(
    r"(?<![\d+])(?:"
    r"(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}"          # Chinese mobile, 11 digits
    r"|0\d{2,3}-\d{7,8}"                                   # Chinese landline, area code
    r"|\+\d{1,3}[ -]?(?:\(\d{1,4}\)[ -]?)?\d{2,4}(?:[ -]?\d{2,4}){1,4}"  # international, +country
    r"|\(\d{3}\)[ -]?\d{3}-\d{4}|\d{3}-\d{3}-\d{4}"       # North American
    r")(?!\d)")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def is_valid_id_card(number: str) -> bool:
    """The GB 11643 check digit: the weighted digit sum mod 11 picks the last character."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def is_luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


_KINDS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool]], ...] = (
    ("email", _EMAIL, lambda m: True),
    ("id_card", _ID_CARD, is_valid_id_card),
    ("bank_card", _BANK_CARD, lambda m: 13 <= len(_digits(m)) <= 19 and is_luhn_valid(_digits(m))),
    ("phone", _PHONE, lambda m: True),
)


def mask_pii(text: str) -> tuple[str, dict[str, int]]:
    """The text with each piece of PII replaced by its placeholder, and the count per kind."""
    counts: dict[str, int] = {}
    for kind, pattern, is_valid in _KINDS:
        def replace(match: re.Match[str], kind: str = kind, is_valid: Callable[[str], bool] = is_valid) -> str:
            if not is_valid(match.group()):
                return match.group()
            counts[kind] = counts.get(kind, 0) + 1
            return PLACEHOLDERS[kind]
        text = pattern.sub(replace, text)
    return text, counts


@dataclass(frozen=True, slots=True)
class MaskPII:
    """Replaces PII with placeholders; never drops a document."""

    name: ClassVar[str] = "pii"

    def __call__(self, doc: Document) -> Document | Drop:
        text, counts = mask_pii(doc.text)
        return doc.with_text(text).with_stats(self.name, counts)
