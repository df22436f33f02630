"""`luodi minutes FILE`: meeting minutes of a transcript, Markdown (or `--json`) on stdout."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from luodi.cli.options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, ModelOpt
from luodi.errors import InvalidParameterError


def minutes(
    file: Annotated[Path, typer.Argument(help="Transcript: .txt, .md, .docx, .srt or .vtt, one 'Name: text' per turn.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the minutes as JSON instead of Markdown.")] = False,
    meeting_date: Annotated[str | None, typer.Option("--date", help="The meeting's date (YYYY-MM-DD), if the "
                                                     "transcript does not state it; dues are resolved from it.")] = None,
    model: ModelOpt = DEFAULT_MODEL, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
) -> None:
    """Write meeting minutes: summary, decisions, action items (owner, task, due) and open questions."""
    from luodi.apps.minutes import to_markdown, write_minutes
    from luodi.apps.transcript import read_transcript
    from luodi.llm import LLM

    transcript = read_transcript(file, _iso_date(meeting_date))  # before the model loads
    llm = LLM.load(model, device=device, dtype=None if dtype == "auto" else dtype, progress=True)
    result = write_minutes(llm, transcript)
    text = json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n" if as_json else to_markdown(result)
    sys.stdout.write(text)


def _iso_date(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidParameterError(f"--date {text!r} is not a date; write it as YYYY-MM-DD", param="date") from None
