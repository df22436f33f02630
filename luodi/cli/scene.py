"""`luodi scene FILE.json`: several characters at one table, each speaking in turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from luodi.cli.options import (DEFAULT_MODEL, DeviceOpt, DtypeOpt, MaxTokensOpt, ModelOpt, RepetitionPenaltyOpt,
                               SeedOpt, TemperatureOpt)
from luodi.cli.terminal import user_lines


def scene(
    scene_path: Annotated[Path, typer.Argument(metavar="SCENE", help="A scene file: JSON with title, setting, "
                                               "characters [{name, public, secret, style?}] and user?.")],
    auto: Annotated[int, typer.Option(
        "--auto", help="Let the characters talk N rounds among themselves, then exit (no input read).")] = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object per line: {speaker, text, leaked, prompt_tokens, ttft_s}.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    max_tokens: MaxTokensOpt = 80,
    temperature: TemperatureOpt = 0.7,
    repetition_penalty: RepetitionPenaltyOpt = 1.1,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """A murder-mystery table or a game's NPCs: each line you type is heard by all, then every character
    answers in turn. Each knows only its own secret. /exit quits."""
    from luodi.apps.persona import chat_params
    from luodi.apps.scene import SceneChat, read_scene
    from luodi.cli.generate import load_llm

    scene_file = read_scene(scene_path)  # a bad file is reported before the model loads
    table = SceneChat(load_llm(model, device, dtype), scene_file)
    params = chat_params(max_tokens, temperature, repetition_penalty, seed)
    show = (lambda line: print(json.dumps(line.to_dict(), ensure_ascii=False), flush=True)) if as_json else _print
    if not as_json:
        print(f"{table.scene.title}\n{table.scene.setting}\n", flush=True)
    if auto:
        for _ in range(auto):
            table.round(params, show)
        return
    for text in user_lines(f"{table.scene.user}> "):
        text = text.strip()
        if text in ("/exit", "/quit"):
            break
        if text:
            table.say(text)
            table.round(params, show)


def _print(line) -> None:
    print(f"{line.speaker}: {line.text}" + ("  [gave the secret away]" if line.leaked else "") + "\n", flush=True)
