"""`luodi generate` and `luodi chat`: one completion, or an interactive streaming conversation.

The model stack (torch and everything above it) is imported inside the commands, so `--help` and
usage errors answer at once.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from luodi.cli.options import (
    DEFAULT_MODEL, DeviceOpt, DtypeOpt, MaxTokensOpt, ModelOpt, RepetitionPenaltyOpt, SeedOpt, TemperatureOpt,
    TopKOpt, TopPOpt,
)
from luodi.errors import InvalidParameterError

if TYPE_CHECKING:
    from luodi.llm import LLM

err = Console(stderr=True)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _is_blank(text: str) -> bool:
    """No visible character: empty, whitespace, or only invisible ones (a byte-order mark, a zero-width space)."""
    return not any(ch.isprintable() and not ch.isspace() for ch in text)


def _load(model: str, device: str, dtype: str) -> LLM:
    from luodi.llm import LLM

    return LLM.load(model, device=device, dtype=None if dtype == "auto" else dtype, progress=True)


def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt ('-' reads stdin).")],
    model: ModelOpt = DEFAULT_MODEL,
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.7,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    seed: SeedOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as is, not through the chat template.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with text, token ids and timings.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Complete one prompt, streaming the text (or printing JSON with --json)."""
    from luodi.engine.sampling import SamplingParams

    if prompt == "-":
        prompt = sys.stdin.read()
    if _is_blank(prompt):
        raise InvalidParameterError(
            f"--prompt {prompt!r} is empty; give the text to complete, e.g. -p 'Hello', or -p - to read stdin",
            "prompt")
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    llm = _load(model, device, dtype)
    if not raw and not llm.has_chat_template:
        err.print(f"[yellow]{model} has no chat template: plain completion of the prompt[/yellow]")
    result = llm.complete(llm.prompt_ids(prompt, raw=raw), params, on_text=None if as_json else _write)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        _write("\n")
        err.print(f"[dim]{result.prompt_tokens} prompt tokens, {result.completion_tokens} generated · "
                  f"prefill {result.prefill_tok_s:.0f} tok/s · decode {result.decode_tok_s:.1f} tok/s · "
                  f"{result.finish_reason}[/dim]")


def chat(
    model: ModelOpt = DEFAULT_MODEL,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    max_tokens: MaxTokensOpt = 512,
    temperature: TemperatureOpt = 0.7,
    top_p: TopPOpt = 0.9,
    top_k: TopKOpt = 40,
    repetition_penalty: RepetitionPenaltyOpt = 1.1,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Talk with a model: streams answers, keeps history within the context window. /reset, /exit."""
    from luodi.conversation import Conversation
    from luodi.engine.sampling import SamplingParams

    # Chat defaults as Ollama's: small models loop without a repetition penalty.
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            repetition_penalty=repetition_penalty, seed=seed)
    conversation = Conversation(_load(model, device, dtype), system)
    interactive = sys.stdin.isatty()
    if not conversation.is_chat:
        err.print(f"[yellow]{model} has no chat template: each line is completed as plain text, "
                  "without history.[/yellow]")
    if interactive:
        err.print("[dim]/reset clears the history, /exit (or Ctrl-D) quits.[/dim]")
    for line in _lines(interactive):
        text = line.strip()
        if _is_blank(text):  # an empty turn is never sent to the model: ask again
            if interactive:
                err.print("[dim]empty message not sent: type a message, /reset or /exit[/dim]")
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            conversation.reset()
            err.print("[dim]history cleared[/dim]")
            continue
        try:
            result = conversation.reply(text, params, on_text=_write)
        except InvalidParameterError as exc:
            err.print(f"[red]{exc}[/red]")
            continue
        _write("\n")
        if interactive:
            err.print(f"[dim]{result.completion_tokens} tokens · {result.decode_tok_s:.1f} tok/s[/dim]")


def _lines(interactive: bool):
    if not interactive:
        yield from sys.stdin  # piped: each line is one user turn
        return
    while True:
        try:
            yield input(">>> ")
        except EOFError:
            return
