"""Meeting minutes: a transcript -> title, date, attendees, summary, decisions, action items
{owner, task, due}, open questions — as JSON (valid against `minutes_schema`) and Markdown.

How (a 135M model must not be trusted with what code can do):
- candidates for action items, decisions and open questions are found by rules
  (`luodi.apps.candidates`), each with the turn it came from as evidence; dues are resolved in code
  from the meeting's date (`luodi.apps.dates`);
- the model writes, per part, a schema-constrained JSON object: a title, a summary, and an owner
  for each candidate the rules could not attribute, that owner constrained to an enum of the
  speakers found;
- a transcript longer than a part's token budget is split at speaker turns; every part gets the same
  instructions first (so the engine's prefix cache computes them once) — instructions are never
  truncated; parts are merged in code, deterministically; a last request summarizes the parts.
Knows nothing of files, HTTP or the CLI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from luodi.apps.candidates import Candidate, Statement, action_candidates, decisions, open_questions, sentences
from luodi.apps.generation import Generate, engine_generate
from luodi.apps.transcript import Transcript, Turn
from luodi.engine.grammar import GrammarSpec
from luodi.engine.sampling import SamplingParams
from luodi.llm import LLM

MAX_PART_TOKENS = 3072  # transcript tokens per part: well inside SmolLM2's 8192, and a small model
# follows a shorter context better
SUMMARY_CHARS = 240
TITLE_CHARS = 40
REPETITION_PENALTY = 1.3  # a 135M model left alone loops one phrase until the length cap
INSTRUCTIONS = (
    "You write meeting minutes. You are given numbered speaker turns of one part of a meeting and a "
    "list of candidate action items. Answer with one JSON object: \"title\" — a short title of the "
    "meeting; \"summary\" — two or three sentences on what was discussed, in the language of the "
    "meeting; \"owners\" — for each candidate id listed, the speaker who will do that task. "
    "Use only the speakers' names as given.\n"
    "你负责写会议纪要：给出会议标题、简短摘要（使用会议的语言），并为每个候选行动项指定负责的发言人。"
)


@dataclass(frozen=True, slots=True)
class ActionItem:
    owner: str
    task: str
    due: str | None  # ISO date
    turn: int


@dataclass(frozen=True, slots=True)
class Evidence:
    text: str
    turn: int


@dataclass(slots=True)
class Minutes:
    title: str
    date: str | None
    attendees: list[str]
    summary: str
    decisions: list[Evidence] = field(default_factory=list)
    action_items: list[ActionItem] = field(default_factory=list)
    open_questions: list[Evidence] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Part:
    turns: tuple[Turn, ...]
    candidates: tuple[tuple[str, Candidate], ...]  # (id, candidate) for those the model must attribute


def minutes_schema(attendees: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """JSON Schema of `Minutes.to_dict()`: owners must be among the attendees."""
    evidence = {"type": "object", "required": ["text", "turn"], "additionalProperties": False,
                "properties": {"text": {"type": "string", "minLength": 1}, "turn": {"type": "integer", "minimum": 0}}}
    return {
        "type": "object", "additionalProperties": False,
        "required": ["title", "date", "attendees", "summary", "decisions", "action_items", "open_questions"],
        "properties": {
            "title": {"type": "string", "minLength": 1},
            "date": {"type": ["string", "null"], "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
            "attendees": {"type": "array", "items": {"enum": list(attendees)}, "minItems": 1, "uniqueItems": True},
            "summary": {"type": "string"},
            "decisions": {"type": "array", "items": evidence},
            "open_questions": {"type": "array", "items": evidence},
            "action_items": {"type": "array", "items": {
                "type": "object", "required": ["owner", "task", "due", "turn"], "additionalProperties": False,
                "properties": {"owner": {"enum": list(attendees)}, "task": {"type": "string", "minLength": 1},
                               "due": {"type": ["string", "null"], "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                               "turn": {"type": "integer", "minimum": 0}}}},
        },
    }


def part_schema(candidate_ids: list[str], speakers: tuple[str, ...]) -> dict[str, Any]:
    """What the model writes for one part; each owner is one of the speakers."""
    owners = {"type": "object", "additionalProperties": False, "required": candidate_ids,
              "properties": {cid: {"enum": list(speakers)} for cid in candidate_ids}}
    return {"type": "object", "additionalProperties": False, "required": ["title", "summary", "owners"],
            "properties": {"title": {"type": "string", "maxLength": TITLE_CHARS},
                           "summary": {"type": "string", "maxLength": SUMMARY_CHARS},
                           "owners": owners}}


def write_minutes(llm: LLM, transcript: Transcript, *, generate: Generate | None = None,
                  max_part_tokens: int = MAX_PART_TOKENS) -> Minutes:
    """Minutes of `transcript`; `generate` runs the model's requests (default: `llm`'s engine, batched)."""
    generate = generate or engine_generate(llm)
    candidates = action_candidates(transcript)
    parts = split_parts(llm, transcript, candidates, max_part_tokens)
    replies = generate([part_prompt(llm, transcript, p) for p in parts],
                       [_params(part_schema([cid for cid, _ in p.candidates], transcript.speakers)) for p in parts])
    answers = [_parse(text) for text in replies]
    owners = {cid: owner for a in answers for cid, owner in a.get("owners", {}).items()}
    summaries = [a["summary"].strip() for a in answers if a.get("summary", "").strip()]
    summary = summaries[0] if len(summaries) == 1 else _summarize(llm, generate, summaries)
    titles = [a["title"].strip() for a in answers if a.get("title", "").strip()]
    return Minutes(
        title=transcript.title or (titles[0] if titles else _default_title(transcript.date)),
        date=transcript.date.isoformat() if transcript.date else None,
        attendees=list(transcript.speakers),
        summary=summary or _fallback_summary(transcript),
        decisions=_evidence(decisions(transcript)),
        action_items=merge_actions(candidates, owners),
        open_questions=_evidence(open_questions(transcript)),
    )


def split_parts(llm: LLM, transcript: Transcript, candidates: list[Candidate], max_part_tokens: int) -> list[Part]:
    """Whole turns, in order, packed into parts of at most `max_part_tokens` transcript tokens (and
    what fits the context beside the instructions); a turn longer than that alone is split at its
    sentences, each piece keeping the turn's index."""
    budget = min(max_part_tokens, llm.context_window - _overhead(llm, transcript))
    if budget < 64:
        raise ValueError(f"context window {llm.context_window} leaves no room for a transcript part")
    groups: list[list[Turn]] = [[]]
    used = 0
    for piece, size in _pieces(llm, transcript.turns, budget):
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(piece)
        used += size
    return [Part(tuple(g), tuple((candidate_id(i), c) for i, c in enumerate(candidates)
                                 if c.owner is None and g[0].index <= c.turn <= g[-1].index)) for g in groups]


def _pieces(llm: LLM, turns: tuple[Turn, ...], budget: int):
    for turn in turns:
        size = len(llm.tokenizer.encode(_turn_line(turn)))
        if size <= budget:
            yield turn, size
            continue
        text = ""
        for sentence in sentences(turn.text):
            if text and len(llm.tokenizer.encode(_turn_line(Turn(turn.index, turn.speaker, text + sentence)))) > budget:
                piece = Turn(turn.index, turn.speaker, text)
                yield piece, len(llm.tokenizer.encode(_turn_line(piece)))
                text = ""
            text += sentence if not text or "\u4e00" <= sentence[0] <= "\u9fff" else f" {sentence}"
        if text:
            piece = Turn(turn.index, turn.speaker, text)
            yield piece, len(llm.tokenizer.encode(_turn_line(piece)))


def _overhead(llm: LLM, transcript: Transcript) -> int:
    """Tokens of a part's prompt that are not transcript (instructions, header, candidates, answer
    room), bounded generously: the instructions are never the part that gives way."""
    header = llm.prompt_ids(_messages(transcript, "", ""))
    candidate_room = 48 * min(len(transcript.turns), 64)
    return len(header) + candidate_room + _max_tokens(64)


def candidate_id(position: int) -> str:
    """A candidate's id in prompts and schemas: its position in transcript order."""
    return f"c{position}"


def part_prompt(llm: LLM, transcript: Transcript, part: Part) -> list[int]:
    lines = "\n".join(_turn_line(t) for t in part.turns)
    listed = "\n".join(f"{cid} (turn {c.turn}, {c.speaker}): {c.sentence}" for cid, c in part.candidates) or "(none)"
    return llm.prompt_ids(_messages(transcript, lines, listed))


def _messages(transcript: Transcript, lines: str, listed: str) -> list[dict[str, str]]:
    speakers = ", ".join(transcript.speakers)
    return [{"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": f"Speakers: {speakers}\n\nTurns:\n{lines}\n\nCandidate action items:\n{listed}"}]


def _turn_line(turn: Turn) -> str:
    return f"[{turn.index}] {turn.speaker}: {turn.text}"


def _params(schema: dict[str, Any]) -> SamplingParams:
    num_owners = len(schema["properties"]["owners"]["properties"])
    return SamplingParams(temperature=0, max_tokens=_max_tokens(num_owners), repetition_penalty=REPETITION_PENALTY,
                          grammar=GrammarSpec("json_schema", json.dumps(schema, ensure_ascii=False)))


def _max_tokens(num_owners: int) -> int:
    # Room for the longest strings the schema allows (a CJK char can take 3 tokens) and each owner.
    return 3 * (SUMMARY_CHARS + TITLE_CHARS) + 24 * num_owners + 32


def _parse(text: str) -> dict[str, Any]:
    """The model's JSON; an answer cut short (or otherwise unparsable) counts as empty, and the
    minutes fall back to code for what it should have said."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _summarize(llm: LLM, generate: Generate, summaries: list[str]) -> str:
    if not summaries:
        return ""
    schema = {"type": "object", "additionalProperties": False, "required": ["summary"],
              "properties": {"summary": {"type": "string", "maxLength": SUMMARY_CHARS * 2}}}
    prompt = llm.prompt_ids([
        {"role": "system", "content": "Combine the summaries of the parts of one meeting into one summary of "
                                      "three to five sentences, in the meeting's language. Answer as JSON."},
        {"role": "user", "content": "\n".join(f"Part {i + 1}: {s}" for i, s in enumerate(summaries))}])
    params = SamplingParams(temperature=0, max_tokens=6 * SUMMARY_CHARS + 32, repetition_penalty=REPETITION_PENALTY,
                            grammar=GrammarSpec("json_schema", json.dumps(schema)))
    merged = _parse(generate([prompt], [params])[0]).get("summary", "").strip()
    return merged or " ".join(summaries)


def merge_actions(candidates: list[Candidate], model_owners: dict[str, str]) -> list[ActionItem]:
    """Action items in transcript order (`candidates` are): the rule's owner where it decided, else the
    model's; one item per (owner, task, due), the first mention kept as evidence."""
    items: dict[tuple[str, str, str | None], ActionItem] = {}
    for position, c in enumerate(candidates):
        owner = c.owner or model_owners.get(candidate_id(position))
        if owner is None:
            continue
        due = c.due.isoformat() if c.due else None
        items.setdefault((owner, c.sentence, due), ActionItem(owner, c.sentence, due, c.turn))
    return list(items.values())


def _evidence(statements: list[Statement]) -> list[Evidence]:
    return list({s.text: Evidence(s.text, s.turn) for s in statements}.values())


def _default_title(meeting: date | None) -> str:
    return f"Meeting {meeting.isoformat()}" if meeting else "Meeting"


def _fallback_summary(transcript: Transcript) -> str:
    return " ".join(sentences(transcript.turns[0].text)[:2])


def to_markdown(minutes: Minutes) -> str:
    lines = [f"# {minutes.title}", ""]
    if minutes.date:
        lines.append(f"**Date:** {minutes.date}  ")
    lines += [f"**Attendees:** {', '.join(minutes.attendees)}", "", "## Summary", "", minutes.summary, ""]
    lines += _section("Decisions", [f"{d.text} _(turn {d.turn})_" for d in minutes.decisions])
    lines += ["## Action items", ""]
    if minutes.action_items:
        lines += ["| Owner | Task | Due | Turn |", "|---|---|---|---|"]
        lines += [f"| {a.owner} | {a.task.replace('|', '/')} | {a.due or '—'} | {a.turn} |" for a in minutes.action_items]
    else:
        lines.append("_None._")
    lines.append("")
    lines += _section("Open questions", [f"{q.text} _(turn {q.turn})_" for q in minutes.open_questions])
    return "\n".join(lines).rstrip() + "\n"


def _section(title: str, items: list[str]) -> list[str]:
    return [f"## {title}", "", *([f"- {i}" for i in items] or ["_None._"]), ""]
