"""The support bot: answers from a knowledge base with [n] citations, in a configured persona and
tone, and hands off to a person instead of guessing when retrieval finds nothing good enough.

Owns three decisions, each made in code rather than by the model, so a small model cannot get
them wrong: (1) the follow-up rewrite — a short question, or one that leans on the conversation
("what about it?", "那个呢"), is searched together with the previous question; (2) hand-off — the
best cosine similarity between the (rewritten) question and any passage must reach `min_score`
(picked on a tuning set by `pick_min_score`), else the reply is a hand-off and the model is not
asked at all; (3) citations — the [n] the model writes are kept; when it writes none, the
best-retrieved passage is attached as the source. A larger model would rewrite follow-ups itself
and cite reliably; the threshold would stay.

Must not know: HTTP, the CLI, how stores keep vectors (only `Store.search_vector`'s cosine scores).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from luodi.corpus.document import cjk_fraction
from luodi.engine.sampling import SamplingParams
from luodi.kb.answer import Source, answer_messages, cited_numbers, fit_passages
from luodi.kb.document import Hit
from luodi.kb.embedding import Embedder
from luodi.kb.retrieval import search
from luodi.kb.store.base import Store
from luodi.llm import LLM, Message

# multilingual-e5-small cosines, picked per question language by `pick_min_score` on the tuning set
# (benchmarks/support_tune/, a smart lock's pages, not the evaluation set): `python
# benchmarks/support_eval.py --tune`. Chinese questions score higher against every passage than
# English ones (unanswerable Chinese questions reach 0.83-0.88, unanswerable English ones 0.71-0.87),
# so one threshold for both hands off too few Chinese questions or too many English ones. Tuning set,
# per language: hand-off 0.81 of 16 unanswerable, wrongly 0.21 of 29 answerable (one threshold, 0.8355:
# 0.75 and 0.17); near-misses such as "NFC 门卡" (0.885) still score above answerable paraphrases, which
# no threshold on one cosine can separate. The evaluation set's rates are held out.
DEFAULT_MIN_SCORES = {"en": 0.8306, "zh": 0.8715}
HANDOFF_TEXT = ("I could not find this in our documentation, so I will not guess. "
                "Would you like me to hand you over to a colleague?")
_FOLLOW_UP = re.compile(r"\b(it|its|that|this|those|these|they|them|there|one)\b|它|这个|那个|这些|那些|呢[？?]?$",
                        re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SupportConfig:
    persona: str = "You are the support assistant of our company."
    tone: str = "friendly and concise"
    min_score: float | None = None  # None: the tuned threshold of the question's language
    k: int = 4

    def threshold(self, query: str) -> float:
        """The cosine the best passage must reach for `query` to be answered, not handed off."""
        return DEFAULT_MIN_SCORES[query_language(query)] if self.min_score is None else self.min_score


@dataclass(frozen=True, slots=True)
class SupportReply:
    answer: str
    sources: list[Source]
    handoff: bool
    query: str  # what was searched (the question, or the rewritten follow-up)
    best_score: float
    reason: str = ""  # why a hand-off was made; empty for an answer

    def to_dict(self) -> dict[str, Any]:
        reply = {"answer": self.answer, "sources": [s.as_json() for s in self.sources if s.cited],
                 "handoff": self.handoff, "query": self.query, "best_score": round(self.best_score, 4)}
        return {**reply, "reason": self.reason} if self.handoff else reply


@dataclass(frozen=True, slots=True)
class SupportTurn:
    """One question made ready to answer: what was searched, how close the best passage came, and,
    unless it is a hand-off, the numbered passages and the prompt. The caller generates the answer
    from `prompt_ids` its own way (the CLI on the `LLM`, the server through its async engine) and
    hands the text to `SupportBot.finish`."""

    question: str
    query: str
    best_score: float
    handoff: bool
    passages: list[Hit] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)  # empty without a model
    top: int = 0  # the [n] of the best-retrieved passage: the source when the answer cites none


def query_language(text: str) -> str:
    """ "zh" for a question holding any CJK character (Chinese with an English product name is still
    Chinese to the embedder's scores), "en" otherwise: the two score ranges the thresholds are tuned for."""
    return "zh" if cjk_fraction(text) > 0 else "en"


def default_params(max_tokens: int = 200) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, repetition_penalty=1.1)


def rewrite_follow_up(history: list[Message], question: str) -> str:
    """The search query for `question` given earlier user turns: a follow-up carries the previous question."""
    previous = [m["content"] for m in history if m["role"] == "user"]
    if previous and (len(question.split()) <= 4 and len(question) < 20 or _FOLLOW_UP.search(question)):
        return f"{previous[-1]} {question}"
    return question


@dataclass(slots=True)
class SupportBot:
    llm: LLM | None  # None: retrieval and hand-off only (the evaluation of the threshold)
    store: Store
    embedder: Embedder
    kb: str
    owner: str
    config: SupportConfig = SupportConfig()
    history: list[Message] = field(default_factory=list)

    def ask(self, question: str, params: SamplingParams | None = None,
            on_text: Callable[[str], None] | None = None) -> SupportReply:
        params = params or default_params()
        turn = self.prepare(question, params.max_tokens or 200)
        text = ""
        if turn.prompt_ids:
            assert self.llm is not None  # prepare builds a prompt only with a model
            text = self.llm.complete(turn.prompt_ids, params, on_text=on_text).text
        return self.finish(turn, text)

    def prepare(self, question: str, max_tokens: int = 200) -> SupportTurn:
        """Rewrite a follow-up, decide on a hand-off, and build the prompt (fit to the context window)."""
        query = rewrite_follow_up(self.history, question)
        best = self.best_score(query)
        if best < self.config.threshold(query):
            return SupportTurn(question, query, best, handoff=True)
        hits = search(self.store, self.embedder, self.kb, query, owner=self.owner, k=self.config.k)
        if self.llm is None:
            return SupportTurn(question, query, best, False, hits[:1], top=1)
        # Room for the answer and for the persona the fitted prompt does not hold yet.
        persona_tokens = len(self.llm.prompt_ids([{"role": "system", "content": self._persona()}]))
        passages, _ = fit_passages(self.llm, query, hits, max_tokens + persona_tokens)
        prompt_ids = self.llm.prompt_ids(self._messages(question, passages))
        return SupportTurn(question, query, best, False, passages, prompt_ids, passages.index(hits[0]) + 1)

    def finish(self, turn: SupportTurn, text: str) -> SupportReply:
        """The reply to `turn` given the model's `text`, with its sources; the turn joins the history."""
        if turn.handoff:
            reason = self._handoff_reason(turn)
            reply = SupportReply(HANDOFF_TEXT, [], True, turn.query, turn.best_score, reason)
        else:
            text = text.strip()
            cited = cited_numbers(text) & set(range(1, len(turn.passages) + 1))
            cited = cited or {turn.top}  # the model cited nothing: the best-retrieved passage is the source
            sources = [Source(n, hit, n in cited) for n, hit in enumerate(turn.passages, 1)]
            reply = SupportReply(text, sources, False, turn.query, turn.best_score)
        self.history += [{"role": "user", "content": turn.question},
                         {"role": "assistant", "content": reply.answer}]
        return reply

    def best_score(self, query: str) -> float:
        hits = self.store.search_vector(self.kb, self.embedder.embed_query(query), 1, owner=self.owner)
        return hits[0].score if hits else 0.0

    def _handoff_reason(self, turn: SupportTurn) -> str:
        return (f"no passage of knowledge base {self.kb!r} is close enough to the question (best cosine "
                f"similarity {turn.best_score:.3f}, below {self.config.threshold(turn.query):.3f})")

    def _messages(self, question: str, passages: list[Hit]) -> list[Message]:
        messages = answer_messages(question, passages)
        messages[0] = {"role": "system", "content": f"{self._persona()}\n\n{messages[0]['content']}"}
        return messages

    def _persona(self) -> str:
        return f"{self.config.persona} Your tone is {self.config.tone}."


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    min_score: float
    balanced_accuracy: float
    handoff_rate: float  # of the unanswerable questions, handed off
    answer_rate: float  # of the answerable questions, answered (not handed off)
    margin: float  # width of the gap between scores the threshold sits in


def pick_min_score(answerable: Sequence[float], unanswerable: Sequence[float]) -> ThresholdChoice:
    """The hand-off threshold for a tuning set's best-retrieval cosines.

    Only the midpoints between neighbouring distinct scores are candidates: any threshold inside one
    gap splits the questions the same way, and the middle keeps the widest margin to both sides. The
    candidate with the best balanced accuracy — the mean of the hand-off rate on unanswerable and the
    answer rate on answerable questions, so the larger class does not outvote the smaller — wins; on
    a tie the wider gap wins (the split least likely to move on new questions), then the lower one.
    """
    if not answerable or not unanswerable:
        raise ValueError("picking a threshold needs both answerable and unanswerable scores")
    scores = sorted(set(answerable) | set(unanswerable))
    choices = [_choice((lo + hi) / 2, hi - lo, answerable, unanswerable)
               for lo, hi in zip(scores, scores[1:], strict=False)]
    if not choices:  # every score equal: no threshold separates anything
        return _choice(scores[0], 0.0, answerable, unanswerable)
    return max(choices, key=lambda c: (c.balanced_accuracy, c.margin, -c.min_score))


def _choice(threshold: float, margin: float, answerable: Sequence[float],
            unanswerable: Sequence[float]) -> ThresholdChoice:
    handoff = sum(s < threshold for s in unanswerable) / len(unanswerable)
    answer = sum(s >= threshold for s in answerable) / len(answerable)
    return ThresholdChoice(threshold, (handoff + answer) / 2, handoff, answer, margin)
