"""Personal data for the evaluation set: values that pass the checks real detectors apply.

Owns: Chinese resident ID numbers with a valid GB 11643-1999 check character, Luhn-valid bank
card numbers, Chinese mobile numbers, UK/US phone numbers and e-mail addresses, each drawn from a
seeded `random.Random`; and the two validators (`id_card_is_valid`, `luhn_is_valid`) the tests
use as oracles. Knows nothing about documents or Luodi.
"""

from __future__ import annotations

import random

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"  # GB 11643-1999: check character for (sum of weighted digits) mod 11
REGIONS = ("110101", "110105", "310104", "310115", "440305", "440106", "510107", "330106",
           "320102", "420111", "610113", "500103")
CARD_PREFIXES = {"zh": ("622202", "621700", "622848", "623058", "621483", "622588"),
                 "en": ("4539", "4716", "5425", "5105")}


def id_check_char(first17: str) -> str:
    """The 18th character of a resident ID number from its first 17 digits."""
    return ID_CHECK[sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS)) % 11]


def id_card_is_valid(value: str) -> bool:
    """True when `value` is 17 digits plus the right check character (GB 11643-1999)."""
    return (len(value) == 18 and value[:17].isdigit()
            and value[17].upper() == id_check_char(value[:17]))


def luhn_is_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def make_id_card(rng: random.Random) -> str:
    first17 = (rng.choice(REGIONS) + f"{rng.randint(1960, 2004)}{rng.randint(1, 12):02d}"
               f"{rng.randint(1, 28):02d}" + f"{rng.randint(0, 999):03d}")
    return first17 + id_check_char(first17)


def make_bank_card(rng: random.Random, language: str) -> str:
    """A Luhn-valid card number of 16 to 19 digits; sometimes written in groups of four."""
    prefix = rng.choice(CARD_PREFIXES[language])
    length = 16 if language == "en" else rng.choice((16, 16, 17, 18, 19, 19))
    body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    check = next(str(c) for c in range(10) if luhn_is_valid(body + str(c)))
    number = body + check
    if rng.random() < 0.3:
        return " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    return number


def make_cn_mobile(rng: random.Random) -> str:
    number = "1" + rng.choice("3456789") + "".join(str(rng.randint(0, 9)) for _ in range(9))
    if rng.random() < 0.2:
        return f"+86 {number[:3]} {number[3:7]} {number[7:]}"
    return number


def make_intl_phone(rng: random.Random) -> str:
    d = lambda k: "".join(str(rng.randint(0, 9)) for _ in range(k))  # noqa: E731
    return rng.choice((f"+44 20 7946 {d(4)}", f"+44 7700 900{d(3)}", f"+1 415-555-{d(4)}",
                       f"+1 (212) 555-{d(4)}", f"+44 161 496 {d(4)}", f"+1 646 555 {d(4)}"))


def make_email(rng: random.Random, language: str) -> str:
    if language == "zh":
        user = rng.choice(("zhangwei", "liming", "wangfang", "chenjie", "service", "hr.dept",
                           "xiaoyu")) + str(rng.randint(1, 2024))
        domain = rng.choice(("163.com", "qq.com", "126.com", "sina.com", "example.com.cn"))
    else:
        user = rng.choice(("emma.collins", "d.park", "support", "laura_mendes", "info",
                           "j.whitaker", "bookings")) + str(rng.randint(1, 99))
        domain = rng.choice(("example.com", "gmail.com", "outlook.com", "example.co.uk"))
    return f"{user}@{domain}"
