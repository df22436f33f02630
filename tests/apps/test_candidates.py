"""Rule-based candidates: who owns a sentence, which sentences are decisions."""

from datetime import date

from luodi.apps.candidates import action_candidates, decisions
from luodi.apps.transcript import parse_transcript

TEXT = """日期：2024-12-02
张伟：李娜，请你在12月6日之前把超支说明发给财务部。
李娜：好的。我会在周五前发。
王强：我们再看看吧。
Maria: Tom, can you update the pricing page by December 6?
Tom: Sure. Last Thursday the page was down.
Maria: I'll ask legal tomorrow.
"""


def test_owners_by_rule():
    t = parse_transcript(TEXT)
    got = [(c.turn, c.owner, c.due) for c in action_candidates(t)]
    assert got == [
        (0, "李娜", date(2024, 12, 6)),  # names exactly one other speaker
        (1, "李娜", date(2024, 12, 6)),  # first person: the speaker; 周五 after Monday 2 December
        (3, "Tom", date(2024, 12, 6)),
        (5, "Maria", date(2024, 12, 3)),
    ]  # "Last Thursday" is no due and commits nobody; "我们再看看吧" is not a task


def test_a_decision_that_points_back_carries_what_was_decided():
    t = parse_transcript("赵丽：五个有点多，我们先批三个。这个就这么定了。\n孙涛：好的。\nA: We agreed to ship on Monday.\n")
    assert [d.text for d in decisions(t)] == ["五个有点多，我们先批三个。这个就这么定了。", "We agreed to ship on Monday."]
