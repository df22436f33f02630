"""`luodi generate` and `luodi chat`: one completion, or an interactive streaming conversation.

The model stack (torch and everything above it) is imported inside the commands, so `--help` and
usage errors answer at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from luodi.cli.options import (
    DEFAULT_MODEL, DeviceOpt, DtypeOpt, MaxTokensOpt, ModelOpt, RepetitionPenaltyOpt, SeedOpt, SpeculativeOpt,
    TemperatureOpt, TopKOpt, TopPOpt,
)
from luodi.cli.terminal import user_lines
from luodi.errors import InvalidParameterError

if TYPE_CHECKING:
    from luodi.engine.grammar import GrammarSpec
    from luodi.llm import LLM
    from luodi.toolcall import Tool, ToolChoice

err = Console(stderr=True)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _is_blank(text: str) -> bool:
    """No visible character: empty, whitespace, or only invisible ones (a byte-order mark, a zero-width space)."""
    return not any(ch.isprintable() and not ch.isspace() for ch in text)


def load_llm(model: str, device: str, dtype: str, speculative: str = "ngram") -> LLM:
    """The model with the CLI's engine settings (apps commands share it)."""
    from luodi.engine.engine import EngineConfig
    from luodi.engine.speculative import SpeculativeConfig
    from luodi.llm import LLM

    config = EngineConfig(speculative=SpeculativeConfig(method=speculative))  # a bad method fails before loading
    return LLM.load(model, device=device, dtype=None if dtype == "auto" else dtype, progress=True,
                    engine_config=config)


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
    json_schema: Annotated[Path | None, typer.Option(
        "--json-schema", help="Constrain the output to this JSON Schema file.", dir_okay=False)] = None,
    regex: Annotated[str | None, typer.Option("--regex", help="Constrain the output to this regex.")] = None,
    choice: Annotated[str | None, typer.Option(
        "--choice", help="Constrain the output to one of these comma-separated strings.")] = None,
    speculative: SpeculativeOpt = "ngram",
) -> None:
    """Complete one prompt, streaming the text (or printing JSON with --json)."""
    from luodi.engine.sampling import SamplingParams

    if prompt == "-":
        prompt = sys.stdin.read()
    if _is_blank(prompt):
        raise InvalidParameterError(
            f"--prompt {prompt!r} is empty; give the text to complete, e.g. -p 'Hello', or -p - to read stdin",
            "prompt")
    grammar = _grammar(json_schema, regex, choice)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                            grammar=grammar)
    llm = load_llm(model, device, dtype, speculative)
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


def _grammar(json_schema: Path | None, regex: str | None, choice: str | None) -> GrammarSpec | None:
    """The one grammar the options name (at most one of --json-schema, --regex, --choice)."""
    from luodi.engine.grammar import GrammarSpec

    given = [name for name, value in (("--json-schema", json_schema), ("--regex", regex), ("--choice", choice))
             if value is not None]
    if len(given) > 1:
        raise InvalidParameterError(f"{' and '.join(given)} both constrain the output; give one of them", "grammar")
    if json_schema is not None:
        try:
            text = json_schema.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidParameterError(f"--json-schema {json_schema}: cannot read it ({exc.strerror})",
                                        "json_schema") from exc
        return GrammarSpec("json_schema", text, param="--json-schema")
    if regex is not None:
        return GrammarSpec("regex", regex, param="--regex")
    if choice is not None:
        options = [c.strip() for c in choice.split(",") if c.strip()]
        return GrammarSpec("choice", json.dumps(options, ensure_ascii=False), param="--choice")
    return None


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
    tools: Annotated[Path | None, typer.Option(
        "--tools", help="A JSON file of OpenAI tool definitions the model may call (one call an answer); "
        "calls print as JSON lines.",
        dir_okay=False)] = None,
    tool_choice: Annotated[str, typer.Option(
        "--tool-choice", help="With --tools: auto, required, none, or a function's name (that call).")] = "auto",
    speculative: SpeculativeOpt = "ngram",
) -> None:
    """Talk with a model: streams answers, keeps history within the context window. /reset, /exit."""
    from luodi.conversation import Conversation
    from luodi.engine.sampling import SamplingParams

    # Chat defaults as Ollama's: small models loop without a repetition penalty.
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            repetition_penalty=repetition_penalty, seed=seed)
    functions, choice = _tools(tools, tool_choice)
    llm = load_llm(model, device, dtype, speculative)
    # One call per answer: a small model allowed several repeats the same call until max_tokens.
    conversation = Conversation(llm, system, functions, choice, is_parallel=False)
    interactive = sys.stdin.isatty()
    if not conversation.is_chat:
        err.print(f"[yellow]{model} has no chat template: each line is completed as plain text, "
                  "without history.[/yellow]")
    if interactive:
        err.print("[dim]/reset clears the history, /exit (or Ctrl-D) quits.[/dim]")
    for line in user_lines():
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
            reply = conversation.reply(text, params, on_text=_write)
        except InvalidParameterError as exc:
            err.print(f"[red]{exc}[/red]")
            continue
        if reply.content:
            _write("\n")
        for call in reply.tool_calls:  # data, one JSON object a line, for a script to run the tool
            print(json.dumps({"id": call.id, "name": call.name, "arguments": json.loads(call.arguments)},
                             ensure_ascii=False), flush=True)
        result = reply.completion
        if interactive:
            err.print(f"[dim]{result.completion_tokens} tokens · {result.decode_tok_s:.1f} tok/s[/dim]")


def _tools(path: Path | None, tool_choice: str) -> tuple[list[Tool], ToolChoice]:
    """The tools of a `--tools` file and the `--tool-choice` among them; one-line errors for bad ones."""
    from luodi.toolcall import ToolChoice, check_tool_choice, tools_from_definitions

    if path is None:
        return [], ToolChoice("none")
    try:
        definitions = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidParameterError(f"--tools {path}: cannot read it ({exc.strerror})", "tools") from exc
    except ValueError as exc:
        raise InvalidParameterError(f"--tools {path} is not JSON: {exc}", "tools") from exc
    functions = tools_from_definitions(definitions)
    choice = ToolChoice(tool_choice) if tool_choice in ("none", "auto", "required") \
        else ToolChoice("required", tool_choice)
    check_tool_choice(choice, functions)
    return functions, choice

