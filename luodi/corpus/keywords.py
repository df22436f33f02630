"""Ads, spam and porn keyword density, with word lists Luodi writes (zh and en).

Owns the lists and the density rule: hits per 1,000 units (Chinese characters, English words),
with a minimum number of hits so one stray word never drops a document. English terms match on
word boundaries, case-insensitively; Chinese terms as substrings. Knows nothing about other steps.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import ClassVar

from luodi.corpus.document import Document, Drop, units

KEYWORDS: dict[str, tuple[str, ...]] = {
    "ads": (
        "buy now", "order now", "free shipping", "limited offer", "limited time offer", "best price",
        "discount", "coupon", "promo code", "click here", "add to cart", "special offer", "sale ends",
        "立即购买", "点击购买", "优惠券", "折扣", "包邮", "限时", "特价", "促销", "秒杀", "抢购", "下单",
        "加微信", "扫码", "领取优惠",
    ),
    "spam": (
        "casino", "jackpot", "viagra", "lottery", "bet now", "make money online", "earn money fast",
        "work from home", "crypto giveaway", "payday loan", "weight loss pills",
        "博彩", "赌场", "彩票", "时时彩", "刷单", "日赚", "网赚", "兼职日结", "贷款秒批", "代开发票",
    ),
    "porn": (
        "porn", "porno", "xxx", "nude", "nudes", "sex video", "adult video", "escort", "camgirl",
        "色情", "成人视频", "黄色网站", "裸聊", "约炮", "一夜情", "av女优",
    ),
}


@dataclass(frozen=True, slots=True)
class Keywords:
    """Drops documents whose hits of a list, per 1,000 units, pass that list's limit."""

    name: ClassVar[str] = "keywords"
    max_hits_per_1000_units: dict[str, float] = field(default_factory=lambda: {"ads": 20, "spam": 10, "porn": 5})
    min_hits: int = 3

    def __call__(self, doc: Document) -> Document | Drop:
        num_units = max(len(units(doc.text)), 1)
        hits = {kind: count_hits(doc.text, kind) for kind in self.max_hits_per_1000_units}
        for kind, limit in self.max_hits_per_1000_units.items():
            if hits[kind] >= self.min_hits and hits[kind] * 1000 / num_units > limit:
                return Drop(f"{kind}_keywords")
        return doc.with_stats(self.name, {k: v for k, v in hits.items() if v})


def count_hits(text: str, kind: str) -> int:
    """Occurrences of the list's terms in `text`."""
    return len(_pattern(kind).findall(text.lower()))


@functools.cache
def _pattern(kind: str) -> re.Pattern[str]:
    terms = sorted(KEYWORDS[kind], key=len, reverse=True)
    parts = [re.escape(t) if not t.isascii() else rf"\b{re.escape(t)}\b" for t in terms]
    return re.compile("|".join(parts))
