"""`luodi persona CARD`: talk with a character card (V1/V2/V3, JSON or PNG), or export it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from luodi.cli.options import (DEFAULT_MODEL, DeviceOpt, DtypeOpt, MaxTokensOpt, ModelOpt, RepetitionPenaltyOpt,
                               SeedOpt, TemperatureOpt)
from luodi.cli.terminal import user_lines
from luodi.errors import InvalidParameterError

err = Console(stderr=True)


def persona(
    card_path: Annotated[Path, typer.Argument(metavar="CARD", help="A character card: .json or .png (V1, V2 or V3).")],
    export: Annotated[Path | None, typer.Option(
        "--export", help="Write the card to FILE.json or FILE.png (every field kept) and exit.")] = None,
    print_prompt: Annotated[bool, typer.Option(
        "--print-prompt", help="Print the assembled prompt for the message on stdin; generate nothing.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Each stdin line is a turn; print {reply, prompt_tokens, ttft_s} per turn.")] = False,
    user: Annotated[str, typer.Option("--user", help="Your name in the chat ({{user}}).")] = "User",
    greeting: Annotated[int, typer.Option("--greeting", help="0: the first message; 1..: an alternate greeting.")] = 0,
    model: ModelOpt = DEFAULT_MODEL,
    max_tokens: MaxTokensOpt = 200,
    temperature: TemperatureOpt = 0.7,
    repetition_penalty: RepetitionPenaltyOpt = 1.1,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Chat as a character card: its greeting, examples and lorebook shape every reply. /exit quits."""
    from luodi.apps.cards import read_card, write_card
    from luodi.apps.persona import Persona

    card = read_card(card_path)
    if export is not None:
        write_card(card, export)
        err.print(f"[green]✓[/green] {card.name} → {export}")
        return
    character = Persona(card, user=user, greeting_index=greeting)
    if print_prompt:
        chat = _chat(character, model, device, dtype)
        sys.stdout.write(chat.prompt_text(_stdin_message()))
        return
    from luodi.apps.persona import chat_params

    params = chat_params(max_tokens, temperature, repetition_penalty, seed)
    chat = _chat(character, model, device, dtype)
    _converse(chat, params, as_json)


def _chat(character, model: str, device: str, dtype: str):
    from luodi.apps.persona import PersonaChat
    from luodi.cli.generate import load_llm

    return PersonaChat(load_llm(model, device, dtype), character)


def _stdin_message() -> str:
    if sys.stdin.isatty():
        raise InvalidParameterError("--print-prompt reads the message from stdin: echo 'Hello' | luodi persona CARD "
                                    "--print-prompt", "print_prompt")
    text = sys.stdin.read().strip()
    if not text:
        raise InvalidParameterError("the message on stdin is empty; pipe the user's message in", "message")
    return text


def _converse(chat, params, as_json: bool) -> None:
    greeting = chat.persona.greeting()
    if greeting and not as_json:
        print(f"{chat.persona.card.name}: {greeting}\n", flush=True)
    for line in user_lines():
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if as_json:
            print(json.dumps(chat.reply(text, params).to_dict(), ensure_ascii=False), flush=True)
            continue
        sys.stdout.write(f"{chat.persona.card.name}: ")
        chat.reply(text, params, on_text=lambda d: (sys.stdout.write(d), sys.stdout.flush()))
        sys.stdout.write("\n\n")

