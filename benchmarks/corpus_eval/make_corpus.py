"""The labelled evaluation corpus for corpus cleaning: a seeded generator, the source of truth.

Owns: composing documents from the banks (banks_en.py, banks_zh.py, banks_noise.py, pii.py) into
eleven categories, labelling them, ordering them (the canonical of a duplicate cluster always comes
first), and the 5-gram Jaccard measure that defines "near duplicate". Knows nothing about Luodi:
benchmarks/corpus_eval.py runs the cleaner on it and scores the result.

Each record: {"id", "text", "category", "language", "cluster", "pii"}. `cluster` names a
duplicate cluster (on its canonical, labelled "good", and on its copies) or is null; `pii` lists
{"kind", "value"} for documents of category "pii" (good documents that must be kept, masked).

    python benchmarks/corpus_eval/make_corpus.py [--seed 17] [--out corpus.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import banks_en  # noqa: E402
import banks_noise  # noqa: E402
import banks_zh  # noqa: E402
import pii  # noqa: E402

SEED = 17
CORPUS = HERE / "corpus.jsonl"
LANGUAGES = ("zh", "en")
# Removal categories: the cleaner must drop these. "good" and "pii" must be kept.
REMOVE = ("exact_duplicate", "near_duplicate", "boilerplate", "spam", "other_language",
          "gibberish", "fragment", "repetition", "markup")
KEEP = ("good", "pii")
CATEGORIES = KEEP + REMOVE
PER_LANGUAGE = {"good": 80, "pii": 25, "exact_duplicate": 25, "near_duplicate": 25,
                "boilerplate": 25, "spam": 25, "gibberish": 25, "fragment": 25,
                "repetition": 25, "markup": 25}
OTHER_LANGUAGE_DOCS = 50
NEAR_JACCARD = (0.80, 0.97)  # a near duplicate's 5-gram Jaccard with its canonical
DISTINCT_JACCARD = 0.5  # kept documents (good, pii) are pairwise below this
PLACEHOLDER = {"email": "[EMAIL]", "phone": "[PHONE]", "id_card": "[ID_CARD]",
               "bank_card": "[BANK_CARD]"}
BANKS = {"en": banks_en, "zh": banks_zh}
NUMBER_SLOT = re.compile(r"n_(\d+)_(\d+)")


# -- similarity -------------------------------------------------------------------------------------


def shingles(text: str, language: str, n: int = 5) -> set[tuple[str, ...]]:
    """5-grams of lower-cased words (en and other spaced scripts) or of characters (zh)."""
    if language == "zh":
        units = re.findall(r"\w", text.lower())
    else:
        units = re.findall(r"\w+", text.lower())
    return {tuple(units[i:i + n]) for i in range(max(1, len(units) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# -- filling templates ------------------------------------------------------------------------------


class Slots(dict):
    """Template values: named slots fixed per document, `n_A_B` a fresh integer at every use."""

    def __init__(self, rng: random.Random, pools: dict[str, list[str]]):
        super().__init__({name: rng.choice(values) for name, values in pools.items()})
        self.rng = rng

    def __missing__(self, key: str) -> str:
        match = NUMBER_SLOT.fullmatch(key)
        if not match:
            raise KeyError(f"template slot {key!r} has no pool; add it to the topic's slots")
        return str(self.rng.randint(int(match[1]), int(match[2])))


def fill(template: str, slots: Slots) -> str:
    text = template.format_map(slots)
    return text[0].upper() + text[1:] if text[:1].islower() else text


def fill_numbers(template: str, rng: random.Random) -> str:
    """Only the `{n_A_B}` slots: for markup, whose own braces are not slots."""
    return re.sub(r"\{n_(\d+)_(\d+)\}", lambda m: str(rng.randint(int(m[1]), int(m[2]))), template)


def join_sentences(sentences: list[str], language: str) -> str:
    return ("" if language == "zh" else " ").join(sentences)


def compose_good(rng: random.Random, language: str, topic: str) -> str:
    """A titled article: intro, two to four body paragraphs, a closing sentence."""
    bank = BANKS[language]
    spec = bank.TOPICS[topic]
    slots = Slots(rng, {**bank.COMMON, **spec["slots"]})
    body = rng.sample(spec["body"], rng.randint(9, min(14, len(spec["body"]))))
    cuts = sorted(rng.sample(range(2, len(body) - 1), rng.randint(1, 3)))
    paragraphs = [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)])]
    paragraphs[0].insert(0, rng.choice(spec["intro"]))
    paragraphs[-1].append(rng.choice(spec["close"]))
    lines = [fill(rng.choice(spec["titles"]), slots)]
    lines += [join_sentences([fill(s, slots) for s in p], language) for p in paragraphs]
    return "\n\n".join(lines)


def random_good(rng: random.Random, language: str) -> str:
    return compose_good(rng, language, rng.choice(sorted(BANKS[language].TOPICS)))


# -- near duplicates --------------------------------------------------------------------------------

SYNONYMS = {
    "en": [("about", "around"), ("very", "really"), ("small", "little"), ("said", "stated"),
           ("begin", "start"), ("often", "frequently"), ("easy", "simple"), ("big", "large"),
           ("help", "assist"), ("best", "finest"), ("quickly", "fast")],
    "zh": [("非常", "十分"), ("大约", "大概"), ("可以", "能够"), ("已经", "早已"), ("时候", "时间"),
           ("如果", "假如"), ("一定", "务必"), ("很多", "许多"), ("马上", "立刻"), ("目前", "眼下")],
}
NEAR_TAILS = {"en": ["Updated on {month} {n_1_28}.", "Edited for clarity.",
                     "This article was first published last week."],
              "zh": ["（本文更新于{month}{n_1_28}日）", "编辑：{person}", "（转载请注明出处）"]}


NEAR_REPLACEMENTS = {
    "en": ["The figures were revised on {month} {n_2_28} after readers pointed out an error.",
           "A correction was added to this paragraph later in the day.",
           "Several people wrote in to say they had a similar experience."],
    "zh": ["这一段内容在发布后做了少量修改。", "有读者来信说自己也有类似的经历。",
           "以上数据已于{n_2_28}日更正。"],
}


def edit_once(rng: random.Random, text: str, language: str) -> str:
    """One small edit: a number, a word, punctuation, a changed sentence, or an added line."""
    kind = rng.choice(("number", "synonym", "punctuation", "sentence", "tail", "delete"))
    if kind == "number" and re.search(r"\d+", text):
        spots = list(re.finditer(r"\d+", text))
        m = rng.choice(spots)
        return text[:m.start()] + str(int(m[0]) + rng.randint(1, 9)) + text[m.end():]
    if kind == "synonym":
        pairs = [(a, b) for a, b in SYNONYMS[language] if a in text]
        if pairs:
            a, b = rng.choice(pairs)
            return text.replace(a, b, 1)
    if kind == "punctuation":
        marks = ("，", "；") if language == "zh" else (", ", "; ")
        return text.replace(marks[0], marks[1], 1) if marks[0] in text else text + "!"
    if kind == "sentence":
        splitter = r"(?<=[。！？])" if language == "zh" else r"(?<=[.!?]) "
        sentences = re.split(splitter, text)
        i = rng.randrange(1, len(sentences))
        sentences[i] = fill(rng.choice(NEAR_REPLACEMENTS[language]), Slots(rng, BANKS[language].COMMON))
        return ("" if language == "zh" else " ").join(sentences)
    if kind == "tail":
        bank = BANKS[language]
        return text + "\n\n" + fill(rng.choice(NEAR_TAILS[language]), Slots(rng, bank.COMMON))
    words = text.split(" ") if language == "en" else list(text)
    i = rng.randrange(len(words) // 4, len(words))
    return (" " if language == "en" else "").join(words[:i] + words[i + 1:])


def near_duplicate(rng: random.Random, text: str, language: str) -> str:
    """`text` with one to four small edits, its 5-gram Jaccard inside NEAR_JACCARD."""
    original = shingles(text, language)
    for _ in range(200):
        edited = text
        for _ in range(rng.randint(1, 4)):
            edited = edit_once(rng, edited, language)
        score = jaccard(original, shingles(edited, language))
        if NEAR_JACCARD[0] <= score < NEAR_JACCARD[1]:
            return edited
    raise RuntimeError("no near duplicate inside the Jaccard range after 200 tries")


# -- personal data ----------------------------------------------------------------------------------

PII_SENTENCES = {
    "en": {
        "email": ["For questions, email {value} and we will reply within two working days.",
                  "Readers can send photos and comments to {value}."],
        "phone": ["You can reach the organiser on {value} during office hours.",
                  "Bookings are taken by phone at {value} from Monday to Friday."],
        "id_card": ["The Chinese resident ID number on the form, {value}, was checked at the "
                    "counter."],
        "bank_card": ["The deposit was paid with card number {value} and refunded in full.",
                      "Please transfer the fee to card {value} and keep the receipt."],
    },
    "zh": {
        "email": ["如有疑问，请发送邮件至{value}，我们会尽快回复。", "投稿邮箱：{value}，欢迎来稿。"],
        "phone": ["联系人{person}，手机{value}，工作日均可来电。", "报名请致电{value}，名额有限。",
                  "如需上门服务，请拨打电话：{value}。"],
        "id_card": ["登记人身份证号码：{value}，请核对无误后签字。", "身份证号{value}的用户已完成实名认证。"],
        "bank_card": ["费用请转入银行卡号{value}，转账后请保留凭证。", "退款将原路退回至尾号对应的银行卡{value}。"],
    },
}


def make_pii_value(rng: random.Random, kind: str, language: str) -> str:
    if kind == "email":
        return pii.make_email(rng, language)
    if kind == "phone":
        return pii.make_cn_mobile(rng) if language == "zh" or rng.random() < 0.3 \
            else pii.make_intl_phone(rng)
    if kind == "id_card":
        return pii.make_id_card(rng)
    return pii.make_bank_card(rng, language)


def pii_document(rng: random.Random, language: str) -> tuple[str, list[dict]]:
    """A good article with one to three sentences carrying personal data, each of its own kind."""
    paragraphs = random_good(rng, language).split("\n\n")
    found = []
    for kind in rng.sample(sorted(PLACEHOLDER), rng.randint(1, 3)):
        value = make_pii_value(rng, kind, language)
        slots = Slots(rng, BANKS[language].COMMON)
        slots["value"] = value
        sentence = fill(rng.choice(PII_SENTENCES[language][kind]), slots)
        i = rng.randrange(1, len(paragraphs))
        paragraphs[i] += ("" if language == "zh" else " ") + sentence
        found.append({"kind": kind, "value": value})
    return "\n\n".join(paragraphs), found


# -- documents to remove ----------------------------------------------------------------------------


def first_sentences(rng: random.Random, language: str, count: int) -> list[str]:
    """`count` sentences of a fresh good article (its title dropped)."""
    body = random_good(rng, language).split("\n\n", 1)[1].replace("\n\n", " ")
    splitter = r"(?<=[。！？])" if language == "zh" else r"(?<=[.!?]) "
    return [s for s in re.split(splitter, body) if s.strip()][:count]


def boilerplate_document(rng: random.Random, language: str) -> str:
    """Navigation, share and footer lines around a title and one or two real sentences."""
    bank = banks_noise.BOILERPLATE[language]
    slots = Slots(rng, {k: v for k, v in bank.items() if k not in ("nav", "footer")})
    head = [fill(line, slots) for line in rng.sample(bank["nav"], rng.randint(4, 7))]
    foot = [fill(line, slots) for line in rng.sample(bank["footer"], rng.randint(3, 6))]
    content = join_sentences(first_sentences(rng, language, rng.randint(1, 2)), language)
    return "\n".join(head[:3] + [content] + head[3:] + foot)


def spam_document(rng: random.Random, language: str) -> str:
    """Keyword-stuffed promotion lines, some repeated."""
    slots = Slots(rng, {"wx": banks_noise.SPAM["wx"], "qq": banks_noise.SPAM["qq"]})
    lines = rng.sample(banks_noise.SPAM[language], rng.randint(3, 6))
    lines += rng.sample(lines, rng.randint(0, 2))
    return "\n".join(fill(line, slots) for line in lines)


def other_language_document(rng: random.Random, language: str) -> str:
    sentences = rng.sample(banks_noise.OTHER_LANGUAGES[language], rng.randint(3, 5))
    return join_sentences(sentences, "zh" if language == "ja" else "en")


MOJIBAKE_EN = {"'": "\u2019", " - ": " \u2014 ", "cafe": "caf\u00e9", "resume": "r\u00e9sum\u00e9",
               "naive": "na\u00efve", "facade": "fa\u00e7ade", "the": "th\u00e9"}


def gibberish_document(rng: random.Random, language: str) -> tuple[str, str | None]:
    """Random character soup, or a good article decoded with the wrong codec (and that article,
    so a cleaner that repairs the mojibake can be credited)."""
    if rng.random() < 0.25:
        return char_soup(rng, language), None
    original = random_good(rng, language)
    if language == "zh":
        if rng.random() < 0.15:  # UTF-8 bytes read as GBK: 鍏徃鐨勪骇鍝 and friends
            return original.encode("utf-8").decode("gbk", errors="replace"), original
        if rng.random() < 0.3:  # GBK bytes read as UTF-8, undecodable bytes replaced
            return original.encode("gbk").decode("utf-8", errors="replace"), original
        return original.encode("gbk").decode("latin-1"), original  # GBK bytes read as Latin-1
    for plain, fancy in MOJIBAKE_EN.items():
        original = original.replace(plain, fancy)
    text = original
    for _ in range(rng.randint(1, 2)):  # UTF-8 read as cp1252, once or twice
        text = text.encode("utf-8").decode("cp1252", errors="replace")
    return text, original


def char_soup(rng: random.Random, language: str) -> str:
    if language == "zh":
        pool = [chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(60)] + list("@#$%^&*~|<>0123456789abcxyz")
    else:
        pool = list("abcdefghijklmnopqrstuvwxyzQXZJK0123456789@#$%^&*~|<>_=+")
    words = ["".join(rng.choice(pool) for _ in range(rng.randint(2, 11)))
             for _ in range(rng.randint(60, 200))]
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    return "\n".join(lines)


def fragment_document(rng: random.Random, language: str) -> str:
    return rng.choice(banks_noise.FRAGMENTS[language])


LOOPS = {"en": ["the best the best", "I think that the answer is that", "and then and then",
                "click here click here", "very very very good"],
         "zh": ["好的好的", "我们认为这个问题很重要，", "然后然后", "哈哈哈哈", "点赞点赞转发"]}


def repetition_document(rng: random.Random, language: str) -> str:
    """A line or a paragraph repeated many times, or a degenerate n-gram loop."""
    kind = rng.choice(("line", "paragraph", "loop", "tail"))
    sentences = first_sentences(rng, language, 4)
    if kind == "line":
        return "\n".join([sentences[0]] * rng.randint(20, 60))
    if kind == "paragraph":
        return "\n\n".join([join_sentences(sentences, language)] * rng.randint(5, 12))
    if kind == "loop":
        sep = "" if language == "zh" else " "
        return sentences[0] + sep + sep.join([rng.choice(LOOPS[language])] * rng.randint(40, 120))
    tail = [sentences[-1]] * rng.randint(25, 50)
    return join_sentences(sentences[:2] + tail, language)


def markup_document(rng: random.Random, language: str) -> str:
    """HTML, JavaScript and CSS leftovers with a real sentence or two buried inside."""
    lines = [fill_numbers(line, rng) for key in ("html", "js", "css")
             for line in rng.sample(banks_noise.MARKUP[key], rng.randint(2, 4))]
    rng.shuffle(lines)
    for sentence in first_sentences(rng, language, rng.randint(1, 2)):
        lines.insert(rng.randrange(len(lines)), f"<p>{sentence}</p>")
    return ("\n" if rng.random() < 0.7 else "").join(lines)


# -- the corpus -------------------------------------------------------------------------------------

MAKERS = {"boilerplate": boilerplate_document, "spam": spam_document,
          "gibberish": gibberish_document, "fragment": fragment_document,
          "repetition": repetition_document, "markup": markup_document}


def record(text: str, category: str, language: str, cluster: str | None = None,
           found: list[dict] | None = None, original: str | None = None) -> dict:
    return {"id": "", "text": text, "category": category, "language": language,
            "cluster": cluster, "pii": found or [], "original": original}


def noise_record(rng: random.Random, category: str, language: str) -> dict:
    made = MAKERS[category](rng, language)
    text, original = made if isinstance(made, tuple) else (made, None)
    return record(text, category, language, original=original)


def distinct_good(rng: random.Random, language: str, kept: list[set], make) -> tuple:
    """A kept document (good or pii) below DISTINCT_JACCARD with every earlier one."""
    for _ in range(100):
        made = make()
        text = made[0] if isinstance(made, tuple) else made
        grams = shingles(text, language)
        if all(jaccard(grams, other) < DISTINCT_JACCARD for other in kept):
            kept.append(grams)
            return made
    raise RuntimeError(f"no distinct {language} document after 100 tries; enlarge the banks")


def language_records(rng: random.Random, language: str) -> list[dict]:
    counts = PER_LANGUAGE
    kept: list[set] = []
    goods = [record(distinct_good(rng, language, kept, lambda: random_good(rng, language)),
                    "good", language) for _ in range(counts["good"])]
    pii_docs = []
    for _ in range(counts["pii"]):
        text, found = distinct_good(rng, language, kept, lambda: pii_document(rng, language))
        pii_docs.append(record(text, "pii", language, found=found))
    copies = duplicate_records(rng, language, goods)
    noise = [noise_record(rng, c, language) for c in MAKERS for _ in range(counts[c])]
    return goods + pii_docs + copies + noise


def duplicate_records(rng: random.Random, language: str, goods: list[dict]) -> list[dict]:
    """Exact and near copies of good documents; a canonical gets one or two copies of one kind."""
    out = []
    canonicals = iter(rng.sample(goods, len(goods)))
    for category in ("exact_duplicate", "near_duplicate"):
        remaining = PER_LANGUAGE[category]
        while remaining:
            canonical = next(canonicals)
            canonical["cluster"] = f"{language}-{category[:5]}-{len(out):03d}"
            for _ in range(min(remaining, rng.choice((1, 1, 2)))):
                text = canonical["text"] if category == "exact_duplicate" \
                    else near_duplicate(rng, canonical["text"], language)
                out.append(record(text, category, language, canonical["cluster"]))
                remaining -= 1
    return out


def order(rng: random.Random, records: list[dict]) -> list[dict]:
    """Shuffle, then put each cluster's canonical at the cluster's earliest position; number ids."""
    rng.shuffle(records)
    slots: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r["cluster"]:
            slots.setdefault(r["cluster"], []).append(i)
    for positions in slots.values():
        members = sorted((records[i] for i in positions), key=lambda r: r["category"] != "good")
        for i, member in zip(positions, members):
            records[i] = member
    for i, r in enumerate(records):
        r["id"] = f"doc-{i:05d}"
    return records


def build_corpus(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    records = [r for language in LANGUAGES for r in language_records(rng, language)]
    others = sorted(banks_noise.OTHER_LANGUAGES)
    for i in range(OTHER_LANGUAGE_DOCS):
        language = others[i % len(others)]
        records.append(record(other_language_document(rng, language), "other_language", language))
    return order(rng, records)


def write_corpus(records: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_corpus(path: Path = CORPUS) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=CORPUS)
    args = parser.parse_args()
    records = build_corpus(args.seed)
    write_corpus(records, args.out)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    print(json.dumps({"documents": len(records), "path": str(args.out), "categories": counts}))


if __name__ == "__main__":
    main()
