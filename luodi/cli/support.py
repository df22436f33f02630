"""`luodi support --kb NAME`: the support bot over a knowledge base — answers with citations, or a hand-off."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from luodi.cli.kb import StoreOpt, _place, _store
from luodi.cli.options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, MaxTokensOpt, ModelOpt
from luodi.cli.terminal import user_lines

out = Console()
err = Console(stderr=True)


def support(
    kb: Annotated[str, typer.Option("--kb", help="The knowledge base to answer from.")],
    question: Annotated[str | None, typer.Option(
        "--ask", help="One question; without it each stdin line is one, follow-ups included.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {answer, sources, handoff} per question.")] = False,
    persona: Annotated[str, typer.Option(help="Who the bot is.")] = "You are the support assistant of our company.",
    tone: Annotated[str, typer.Option(help="How it speaks.")] = "friendly and concise",
    min_score: Annotated[float | None, typer.Option(
        "--min-score", help="Hand off when no passage is at least this similar (cosine); "
                            "default: the threshold tuned for the question's language.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    max_tokens: MaxTokensOpt = 200,
    store: StoreOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Answer customers from a knowledge base with citations; hand off instead of guessing."""
    from luodi.apps.support import SupportBot, SupportConfig
    from luodi.engine.sampling import SamplingParams
    from luodi.kb.embedding import get_embedder
    from luodi.kb.store import check_text
    from luodi.kb.store.base import LOCAL_OWNER
    from luodi.cli.generate import load_llm

    if question is not None:
        check_text(question, "question", "--ask")  # before the model loads
    kb_store = _store(store)
    info = kb_store.info(kb, owner=LOCAL_OWNER)  # a missing knowledge base is an error here
    config = SupportConfig(persona, tone, min_score)
    bot = SupportBot(load_llm(model, device, dtype), kb_store, get_embedder(info.embedder), kb, LOCAL_OWNER, config)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, repetition_penalty=1.1)
    for text in [question] if question is not None else user_lines("support> "):
        if text.strip():
            _show(bot.ask(text.strip(), params), as_json)


def _show(reply, as_json: bool) -> None:
    if as_json:
        print(json.dumps(reply.to_dict(), ensure_ascii=False), flush=True)
        return
    out.print(reply.answer, highlight=False)
    if reply.handoff:
        err.print(f"hand-off: {reply.reason}", style="yellow", markup=False, highlight=False)
    for source in reply.sources:
        if source.cited:
            out.print(f"[{source.number}] {_place(source.hit)}", highlight=False, style="dim")

