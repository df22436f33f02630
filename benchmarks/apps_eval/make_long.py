"""Writes en_long_planning.txt: a planning meeting several times SmolLM2's 8192-token context.

Status talk is composed from fixed phrases (no randomness), with nine hand-written commitments and
two decisions placed at fixed points; their gold entries are written by hand in gold.json.
Run: python benchmarks/apps_eval/make_long.py
"""

from pathlib import Path

SPEAKERS = ("Maria", "Tom", "Priya", "David")
PROJECTS = ("billing", "search", "mobile app", "data warehouse", "onboarding flow", "admin console",
            "notification service", "reporting", "identity service", "partner API", "help center", "checkout")
STATUS = (
    "For the {p} work, the error rate went from {a} percent to {b} percent over the last sprint, mostly thanks to the new retry logic in the client.",
    "On {p}, the team closed {a} tickets and opened {b}; most of the new ones are small layout issues reported by the support team.",
    "The {p} dashboard shows latency at the ninety-fifth percentile around {a}0 milliseconds, which is within the budget we set last quarter.",
    "Usage of {p} grew by {a} percent month over month, and the share of returning users is now about {b} percent.",
    "The {p} migration is about {a}0 percent done; the remaining part is the old export jobs that nobody has touched in years.",
    "Customer feedback on {p} has been mostly positive, although {b} accounts mentioned that the settings page is confusing.",
    "The {p} code base still has {a} flaky tests; they fail roughly one run in {b}, which slows down every merge.",
    "Costs for {p} went down by {a} percent after the storage cleanup, and the hosting bill is now lower than in the spring.",
)
ACTIONS = {  # turn position -> (speaker, line)
    40: ("Maria", "Tom, can you prepare the billing migration plan by December 9?"),
    95: ("Priya", "I'll write the search relevance report by December 12."),
    150: ("David", "I will renew the SSL certificates for the partner API by December 5."),
    205: ("Maria", "Priya, please send the mobile app release notes to support by December 10."),
    260: ("Tom", "I'll set up the load test for checkout by next Friday."),
    330: ("David", "I can clean up the old export jobs in the data warehouse by December 18."),
    400: ("Maria", "I will book the room for the planning offsite by December 4."),
    470: ("Priya", "David, can you review the identity service access logs by December 11?"),
    540: ("Tom", "I'll update the onboarding flow copy by December 20."),
}
DECISIONS = {
    120: ("Maria", "We decided to freeze new features on billing until the migration is finished."),
    430: ("Maria", "We agreed to retire the old admin console in January."),
}
ACKS = ("Sounds good.", "Okay, noted.", "Thanks, that helps.", "Understood.")


def turns() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i in range(600):
        if i in ACTIONS or i in DECISIONS:
            out.append((ACTIONS | DECISIONS)[i])
            continue
        speaker = SPEAKERS[i % 4]
        if i % 7 == 6:
            out.append((speaker, ACKS[i % len(ACKS)]))
            continue
        p = PROJECTS[(i * 5) % len(PROJECTS)]
        first = STATUS[i % len(STATUS)].format(p=p, a=i % 9 + 2, b=(i * 3) % 17 + 3)
        second = STATUS[(i + 3) % len(STATUS)].format(p=PROJECTS[(i + 1) % len(PROJECTS)], a=(i * 7) % 9 + 1, b=i % 13 + 2)
        out.append((speaker, f"{first} {second}"))
    return out


def main() -> None:
    lines = ["Title: Quarterly engineering planning", "Date: 2024-12-02"]
    lines += [f"{s}: {t}" for s, t in turns()]
    Path(__file__).with_name("en_long_planning.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
