"""The support bot's decisions made in code: follow-ups searched with the previous question, hand-off
when no passage is close enough (the model is never asked then), the gold page as the source."""

from __future__ import annotations

import pytest

from luodi.apps.support import (DEFAULT_MIN_SCORES, HANDOFF_TEXT, SupportBot, SupportConfig, pick_min_score,
                                query_language, rewrite_follow_up)

pytest.importorskip("apsw", reason="pip install 'luodi[kb]'")
PAGES = {
    "warranty.md": "# Warranty\nEvery Lumen T2 comes with a three-year limited warranty from the date of purchase.",
    "wifi.md": "# Wi-Fi setup\nThe Lumen T2 connects to 2.4 GHz Wi-Fi networks only; 5 GHz networks are not supported.",
    "returns.md": "# Returns\nYou can return a Lumen T2 within 30 days of delivery for a full refund.",
}


@pytest.mark.parametrize(("history", "question", "query"), [
    ([], "What about it?", "What about it?"),  # nothing to lean on
    ([{"role": "user", "content": "How long is the warranty?"}], "And for sensors?",
     "How long is the warranty? And for sensors?"),
    ([{"role": "user", "content": "保修多久？"}], "那个呢？", "保修多久？ 那个呢？"),
    ([{"role": "user", "content": "How long is the warranty?"}], "Can I return the thermostat after two weeks?",
     "Can I return the thermostat after two weeks?"),  # a whole question stands alone
])
def test_follow_up_rewrite(history, question, query):
    assert rewrite_follow_up(history, question) == query


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from luodi.kb.embedding import get_embedder
    from luodi.kb.ingest.pipeline import Ingestor, collect_files
    from luodi.kb.store.sqlite import SqliteStore

    root = tmp_path_factory.mktemp("support")
    docs = root / "docs"
    docs.mkdir()
    for name, text in PAGES.items():
        (docs / name).write_text(text + "\n")
    embedder = get_embedder()
    store = SqliteStore(root / "store")
    store.create("help", owner="t1", embedder=embedder.name, dim=embedder.dim)
    Ingestor(store, embedder, "help", "t1").add(collect_files([docs]))
    yield store, embedder
    store.close()


def bot(kb, owner="t1"):
    store, embedder = kb
    return SupportBot(None, store, embedder, "help", owner, SupportConfig())


def test_answerable_question_cites_its_page(kb):
    reply = bot(kb).ask("Does it work with 5 GHz Wi-Fi?")
    assert not reply.handoff
    assert [s.hit.source.rsplit("/", 1)[-1] for s in reply.sources if s.cited] == ["wifi.md"]


@pytest.mark.parametrize("question", ["What is the capital of Australia?", "Write me a poem about the sea.",
                                      "上海明天会下雨吗？"])
def test_unanswerable_question_hands_off(kb, question):
    reply = bot(kb).ask(question)
    assert reply.handoff and reply.answer == HANDOFF_TEXT and reply.sources == []
    assert reply.to_dict()["handoff"] is True and reply.best_score < SupportConfig().threshold(question)
    assert "close enough" in reply.to_dict()["reason"] and "'help'" in reply.reason


def test_threshold_follows_the_question_language():
    assert [query_language(q) for q in ("Does it work with 5 GHz Wi-Fi?", "Wi-Fi密码输错了怎么办？")] == ["en", "zh"]
    assert SupportConfig().threshold("How long is the warranty?") == DEFAULT_MIN_SCORES["en"]
    assert SupportConfig().threshold("保修多久？") == DEFAULT_MIN_SCORES["zh"] > DEFAULT_MIN_SCORES["en"]
    assert SupportConfig(min_score=0.5).threshold("保修多久？") == 0.5  # a given threshold holds for both


def test_follow_up_finds_the_page_of_the_first_question(kb):
    support = bot(kb)
    support.ask("How long is the warranty on the Lumen T2?")
    reply = support.ask("Is that from the purchase date?")
    assert reply.query.startswith("How long is the warranty")
    assert [s.hit.source.rsplit("/", 1)[-1] for s in reply.sources if s.cited] == ["warranty.md"]


def test_another_tenant_sees_nothing(kb):
    from luodi.errors import KnowledgeBaseNotFoundError

    with pytest.raises(KnowledgeBaseNotFoundError):
        bot(kb, owner="t2").ask("How long is the warranty?")


def test_threshold_pick_keeps_the_middle_of_a_clean_gap():
    choice = pick_min_score([0.90, 0.86], [0.70, 0.80])
    assert choice.min_score == pytest.approx(0.83) and choice.margin == pytest.approx(0.06)
    assert (choice.balanced_accuracy, choice.handoff_rate, choice.answer_rate) == (1.0, 1.0, 1.0)


def test_threshold_pick_breaks_a_tie_toward_the_wider_gap():
    # sorted: .80u .82u | .84a .85u | .86a .90a. Balanced accuracy by gap midpoint, by hand:
    # .81 -> (1/3 + 3/3)/2 = .667; .83 -> (2/3 + 3/3)/2 = .833 (gap .02); .845 -> (2/3 + 2/3)/2 = .667;
    # .855 -> (3/3 + 2/3)/2 = .833 (gap .01); .88 -> (3/3 + 1/3)/2 = .667. Tie at .833: .83 is wider.
    choice = pick_min_score([0.90, 0.86, 0.84], [0.80, 0.85, 0.82])
    assert choice.min_score == pytest.approx(0.83) and choice.margin == pytest.approx(0.02)
    assert choice.balanced_accuracy == pytest.approx(5 / 6)
    assert choice.handoff_rate == pytest.approx(2 / 3) and choice.answer_rate == 1.0


def test_threshold_pick_needs_both_kinds_of_question():
    with pytest.raises(ValueError, match="both"):
        pick_min_score([0.9], [])
