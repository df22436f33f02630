"""Answers with citations: retrieved passages go into the model's context tagged [n], the model is
asked to cite them, and the reply's sources map each [n] back to file, page/section and passage.

Passages are numbered in a canonical order (by chunk id), not by score, so two questions that
retrieve the same passages build the same prompt prefix and the engine's prefix cache computes
it once. The question comes last for the same reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from luodi.engine.sampling import SamplingParams
from luodi.kb.document import Hit
from luodi.kb.embedding import Embedder
from luodi.kb.retrieval import DEFAULT_K, search
from luodi.kb.store.base import Store
from luodi.llm import LLM, Message

INSTRUCTIONS = (
    "Answer the question using only the numbered passages below. After each fact, cite the passage "
    "it comes from by its number in square brackets, like [2]. If the passages do not contain the "
    "answer, say that you do not know. Answer in the language of the question."
)
_CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True, slots=True)
class Source:
    number: int  # the [n] the passage had in the prompt
    hit: Hit
    cited: bool  # whether the answer cites [n]

    def as_json(self) -> dict:
        return {"n": self.number, "cited": self.cited, **self.hit.as_json()}


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    sources: list[Source]


def numbered_passages(hits: list[Hit]) -> list[Hit]:
    """The passages in prompt order: canonical (by chunk id) so the prefix can be shared."""
    return sorted(hits, key=lambda hit: hit.chunk_id)


def answer_messages(question: str, passages: list[Hit]) -> list[Message]:
    blocks = [f"[{n}] ({_place(hit)})\n{hit.text}" for n, hit in enumerate(passages, start=1)]
    context = INSTRUCTIONS + "\n\nPassages:\n\n" + "\n\n".join(blocks)
    return [{"role": "system", "content": context}, {"role": "user", "content": question}]


def _place(hit: Hit) -> str:
    parts = [hit.source]
    if hit.page is not None:
        parts.append(f"page {hit.page}")
    if hit.section:
        parts.append(hit.section)
    return ", ".join(parts)


def cited_numbers(text: str) -> set[int]:
    return {int(n) for n in _CITATION.findall(text)}


def fit_passages(llm: LLM, question: str, hits: list[Hit], max_tokens: int) -> tuple[list[Hit], list[int]]:
    """Drop the lowest-scored passages until prompt + answer fit the context window."""
    kept = list(hits)  # best first
    while True:
        passages = numbered_passages(kept)
        prompt = llm.prompt_ids(answer_messages(question, passages))
        if len(prompt) + max_tokens <= llm.context_window or not kept:
            return passages, prompt
        kept.pop()


def ask(llm: LLM, store: Store, embedder: Embedder, kb: str, question: str, *, owner: str,
        k: int = DEFAULT_K, params: SamplingParams | None = None,
        on_text: Callable[[str], None] | None = None) -> Answer:
    """Retrieve, answer with [n] citations (streamed to `on_text`), and list the sources."""
    params = params or SamplingParams(temperature=0.0, max_tokens=256, repetition_penalty=1.1)
    hits = search(store, embedder, kb, question, owner=owner, k=k)
    passages, prompt = fit_passages(llm, question, hits, params.max_tokens or 256)
    text = llm.complete(prompt, params, on_text=on_text).text
    cited = cited_numbers(text)
    sources = [Source(n, hit, n in cited) for n, hit in enumerate(passages, start=1)]
    return Answer(text, sources)
