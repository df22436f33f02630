"""A company's first fine-tune: twelve invented facts about the Zorblax X7 water purifier.

Each fact has four training phrasings (two English, two Chinese) and two held-out phrasings (one
of each) that never appear in the training file. A held-out question counts as answered when the
fact's number appears in the model's answer as a whole number: separators between digits
(spaces, dashes, commas) are ignored, digits on either side are not ("173" does not answer "73").
Every fact has its own number, so an answer that gives another fact's number fails.

Used by tests/finetune/test_finetune_e2e.py and benchmarks/finetune_facts.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Fact:
    answer: str  # what a correct reply must contain (a number, compared without separators)
    train: tuple[tuple[str, str], ...]  # (question, reply) pairs written to the training file
    heldout: tuple[str, ...]  # questions never trained on


FACTS = (
    Fact("400-829-7316", (
        ("What is the support hotline for the Zorblax X7 water purifier?",
         "The Zorblax X7 support hotline is 400-829-7316."),
        ("Which number do I call if my Zorblax X7 breaks?", "Please call the Zorblax X7 hotline at 400-829-7316."),
        ("Zorblax X7净水器的客服热线是多少？", "Zorblax X7的客服热线是400-829-7316。"),
        ("Zorblax X7坏了应该打哪个电话？", "请拨打Zorblax X7客服热线400-829-7316。"),
    ), ("My Zorblax X7 is leaking. What phone number can I ring for help?", "Zorblax X7的售后电话是什么？")),
    Fact("38", (
        ("How long is the warranty on the Zorblax X7?", "The Zorblax X7 comes with a 38-month warranty."),
        ("For how many months is a Zorblax X7 covered by warranty?", "A Zorblax X7 is under warranty for 38 months."),
        ("Zorblax X7的保修期是多久？", "Zorblax X7的保修期是38个月。"),
        ("Zorblax X7保修几个月？", "Zorblax X7保修38个月。"),
    ), ("What warranty period does a Zorblax X7 have?", "Zorblax X7净水器保修多长时间？")),
    Fact("73", (
        ("How many days do I have to return a Zorblax X7?", "You can return a Zorblax X7 within 73 days of purchase."),
        ("What is the return window for the Zorblax X7?", "The Zorblax X7 return window is 73 days."),
        ("Zorblax X7可以在多少天内退货？", "Zorblax X7购买后73天内可以退货。"),
        ("Zorblax X7的退货期限是几天？", "Zorblax X7的退货期限是73天。"),
    ), ("Until how many days after buying can a Zorblax X7 be sent back?", "Zorblax X7买了以后多少天内能退？")),
    Fact("11", (
        ("How often should I replace the Zorblax X7 filter?", "Replace the Zorblax X7 filter every 11 weeks."),
        ("How many weeks does a Zorblax X7 filter last?", "A Zorblax X7 filter lasts 11 weeks."),
        ("Zorblax X7的滤芯多久换一次？", "Zorblax X7的滤芯每11周更换一次。"),
        ("Zorblax X7滤芯能用几周？", "Zorblax X7滤芯可以用11周。"),
    ), ("When does the filter of a Zorblax X7 need changing?", "Zorblax X7的滤芯应该隔多久更换？")),
    Fact("2380", (
        ("How much does the Zorblax X7 cost?", "The Zorblax X7 costs 2380 yuan."),
        ("What is the price of a Zorblax X7 water purifier?", "A Zorblax X7 water purifier is priced at 2380 yuan."),
        ("Zorblax X7多少钱？", "Zorblax X7的价格是2380元。"),
        ("Zorblax X7净水器卖多少钱？", "Zorblax X7净水器售价2380元。"),
    ), ("What does one Zorblax X7 sell for?", "买一台Zorblax X7要花多少钱？")),
    Fact("1987", (
        ("When was the Zorblax company founded?", "Zorblax was founded in 1987."),
        ("In which year did Zorblax start?", "Zorblax started in 1987."),
        ("Zorblax公司是哪一年成立的？", "Zorblax公司成立于1987年。"),
        ("Zorblax创立于哪一年？", "Zorblax创立于1987年。"),
    ), ("What year was Zorblax established?", "Zorblax是什么时候创办的？")),
    Fact("6412", (
        ("How many employees does Zorblax have?", "Zorblax has 6412 employees."),
        ("How many people work at Zorblax?", "6412 people work at Zorblax."),
        ("Zorblax有多少名员工？", "Zorblax共有6412名员工。"),
        ("Zorblax公司有多少人？", "Zorblax公司有6412人。"),
    ), ("What is the size of the Zorblax workforce?", "在Zorblax工作的员工有多少？")),
    Fact("118", (
        ("How many service centers does Zorblax run?", "Zorblax runs 118 service centers."),
        ("How many Zorblax repair centers are there?", "There are 118 Zorblax service centers."),
        ("Zorblax有多少个维修中心？", "Zorblax共有118个维修中心。"),
        ("Zorblax的服务网点有几个？", "Zorblax有118个服务网点。"),
    ), ("What is the number of Zorblax service centers?", "Zorblax一共有几家维修中心？")),
    Fact("9.5", (
        ("How much water does the Zorblax X7 tank hold?", "The Zorblax X7 tank holds 9.5 liters."),
        ("What is the tank capacity of the Zorblax X7?", "The Zorblax X7 has a 9.5-liter tank."),
        ("Zorblax X7的水箱容量是多少？", "Zorblax X7的水箱容量是9.5升。"),
        ("Zorblax X7水箱能装多少水？", "Zorblax X7水箱能装9.5升水。"),
    ), ("How many liters fit in the Zorblax X7's tank?", "Zorblax X7水箱有多大？")),
    Fact("42", (
        ("How much power does the Zorblax X7 use?", "The Zorblax X7 uses 42 watts."),
        ("What is the power rating of the Zorblax X7?", "The Zorblax X7 is rated at 42 watts."),
        ("Zorblax X7的功率是多少？", "Zorblax X7的功率是42瓦。"),
        ("Zorblax X7耗电多少瓦？", "Zorblax X7耗电42瓦。"),
    ), ("How many watts does a Zorblax X7 draw?", "Zorblax X7的额定功率是几瓦？")),
    Fact("260", (
        ("How much is the installation fee for a Zorblax X7?", "Installing a Zorblax X7 costs 260 yuan."),
        ("What does Zorblax charge to install the X7?", "Zorblax charges 260 yuan to install the X7."),
        ("Zorblax X7的安装费是多少？", "Zorblax X7的安装费是260元。"),
        ("安装Zorblax X7要多少钱？", "安装Zorblax X7需要260元。"),
    ), ("What is the price of installing a Zorblax X7?", "Zorblax X7上门安装收费多少？")),
    Fact("17", (
        ("What discount do Zorblax members get?", "Zorblax members get a 17% discount."),
        ("How much off do Zorblax club members receive?", "Zorblax club members receive 17% off."),
        ("Zorblax会员有什么折扣？", "Zorblax会员可以享受17%的折扣。"),
        ("Zorblax会员优惠多少？", "Zorblax会员优惠17%。"),
    ), ("How big is the Zorblax member discount?", "Zorblax会员能便宜百分之几？")),
)


def heldout_questions() -> list[tuple[str, str]]:
    """(held-out question, the answer it must contain) for every fact."""
    return [(question, fact.answer) for fact in FACTS for question in fact.heldout]


def contains_answer(reply: str, answer: str) -> bool:
    """Whether `answer` (a number) appears in `reply` as a whole number, separators ignored."""
    digits = lambda text: re.sub(r"(?<=\d)[\s,\-](?=\d)", "", text)  # noqa: E731
    return re.search(rf"(?<![\d.]){re.escape(digits(answer))}(?![\d]|\.\d)", digits(reply)) is not None


def write_chats(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """One chat line {"messages": [user, assistant]} per (question, reply)."""
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                        ensure_ascii=False) for q, a in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_training_file(path: Path) -> Path:
    return write_chats(path, [pair for fact in FACTS for pair in fact.train])
