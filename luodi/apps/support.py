"""The support bot: answers from a knowledge base with [n] citations, in a configured persona and
tone, and hands off to a person instead of guessing when retrieval finds nothing good enough.

Owns three decisions, each made in code rather than by the model, so a small model cannot get
them wrong: (1) the follow-up rewrite — a short question, or one that leans on the conversation
("what about it?", "那个呢"), is searched together with the previous question; (2) hand-off — the
best cosine similarity between the (rewritten) question and any passage must reach
`min_score`, else the reply is a hand-off and the model is not asked at all; (3) citations — the
[n] the model writes are kept; when it writes none, the best-retrieved passage is attached as the
source. A larger model would rewrite follow-ups itself and cite reliably; the threshold would stay.

Must not know: HTTP, the CLI, how stores keep vectors (only `Store.search_vector`'s cosine scores).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from luodi.engine.sampling import SamplingParams
from luodi.kb.answer import Source, answer_messages, cited_numbers, fit_passages
from luodi.kb.embedding import Embedder
from luodi.kb.retrieval import search
from luodi.kb.store.base import Store
from luodi.llm import LLM, Message

# multilingual-e5-small cosine. Set between the highest off-topic question (0.829) and the lowest
# answerable one (0.843) of benchmarks/support_eval.py — calibrated on that set, not held out.
DEFAULT_MIN_SCORE = 0.835
HANDOFF_TEXT = ("I could not find this in our documentation, so I will not guess. "
                "Would you like me to hand you over to a colleague?")
_FOLLOW_UP = re.compile(r"\b(it|its|that|this|those|these|they|them|there|one)\b|它|这个|那个|这些|那些|呢[？?]?$",
                        re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SupportConfig:
    persona: str = "You are the support assistant of our company."
    tone: str = "friendly and concise"
    min_score: float = DEFAULT_MIN_SCORE
    k: int = 4


@dataclass(frozen=True, slots=True)
class SupportReply:
    answer: str
    sources: list[Source]
    handoff: bool
    query: str  # what was searched (the question, or the rewritten follow-up)
    best_score: float

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "sources": [s.as_json() for s in self.sources if s.cited],
                "handoff": self.handoff, "query": self.query, "best_score": round(self.best_score, 4)}


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
        query = rewrite_follow_up(self.history, question)
        best = self.best_score(query)
        if best < self.config.min_score:
            reply = SupportReply(HANDOFF_TEXT, [], True, query, best)
        else:
            reply = self._answer(question, query, best, params, on_text)
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply.answer}]
        return reply

    def best_score(self, query: str) -> float:
        hits = self.store.search_vector(self.kb, self.embedder.embed_query(query), 1, owner=self.owner)
        return hits[0].score if hits else 0.0

    def _answer(self, question: str, query: str, best: float, params: SamplingParams | None,
                on_text: Callable[[str], None] | None) -> SupportReply:
        hits = search(self.store, self.embedder, self.kb, query, owner=self.owner, k=self.config.k)
        if self.llm is None:
            return SupportReply("", [Source(1, hits[0], True)], False, query, best)
        params = params or SamplingParams(temperature=0.0, max_tokens=200, repetition_penalty=1.1)
        passages, _ = fit_passages(self.llm, query, hits, params.max_tokens or 200)
        messages = self._messages(question, passages)
        text = self.llm.complete(self.llm.prompt_ids(messages), params, on_text=on_text).text.strip()
        cited = cited_numbers(text) & set(range(1, len(passages) + 1))
        if not cited:  # the model cited nothing: the best-retrieved passage is the source
            cited = {passages.index(hits[0]) + 1}
        return SupportReply(text, [Source(n, h, n in cited) for n, h in enumerate(passages, 1)], False, query, best)

    def _messages(self, question: str, passages) -> list[Message]:
        messages = answer_messages(question, passages)
        persona = f"{self.config.persona} Your tone is {self.config.tone}."
        messages[0] = {"role": "system", "content": persona + "\n\n" + messages[0]["content"]}
        return messages
