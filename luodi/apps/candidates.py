"""Rule-based pre-extraction for minutes: candidate action items, decisions and open questions.

Owns the cue words (Chinese and English) and the owner rules: a sentence in the first person
("我来", "I'll") belongs to its speaker; one that names exactly one other speaker ("请李娜……",
"Maria, can you ...") to that speaker; one in the second person ("你", "you") to the person
addressed (the next speaker, else the previous one). What the rules cannot attribute ("我们", "we")
is left to the model, whose choice is constrained to the speakers. A 135M model cannot be trusted
to find commitments in free talk, so finding them is done here, in code; the model fills gaps.
Knows nothing of prompts or models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from luodi.apps.dates import resolve_due
from luodi.apps.transcript import Transcript, Turn

_SENTENCE = re.compile(r"(?<=[。！？!?；;])|(?<=[.])\s+")
_ACTION = re.compile(
    r"负责|我来|我去|我会|我将|我负责|请你|请您|麻烦|交给|你来|跟进|之前|以前|截止|"
    r"\b(?:I'll|I will|I can|I'm going to|let me|will you|can you|could you|please|action item|take care of|"
    r"follow up|in charge of|responsible for)\b", re.I)
_DECISION = re.compile(r"决定|定了|确定了|就这么定|一致同意|同意采用|最终|通过了|拍板|"
                       r"\b(?:decided|decision|agreed|we'll go with|let's go with|approved|settled on|final call)\b",
                       re.I)
_OPEN = re.compile(r"待定|还不确定|不确定|还没定|需要确认|再讨论|悬而未决|"
                   r"\b(?:open question|not sure|unclear|TBD|to be decided|still need to decide|undecided)\b", re.I)
_FIRST_PERSON = re.compile(r"^(?:[^，,]{0,6}[，,]\s*)?(?:我(?!们)|I(?:'ll|'m| will| can)\b|[Ll]et me\b)")
_SECOND_PERSON = re.compile(r"你|您|\b(?:you|your)\b", re.I)
_QUESTION = re.compile(r"[?？吗]\s*$")


@dataclass(frozen=True, slots=True)
class Candidate:
    turn: int  # the evidence: index of the turn the sentence is in
    speaker: str
    sentence: str
    owner: str | None  # None: no rule decided; the model picks among the speakers
    due: date | None


@dataclass(frozen=True, slots=True)
class Statement:
    turn: int
    speaker: str
    text: str


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def action_candidates(transcript: Transcript) -> list[Candidate]:
    """Sentences that commit someone to a task, in transcript order."""
    turns = transcript.turns
    found: list[Candidate] = []
    for turn in turns:
        for sentence in sentences(turn.text):
            due = resolve_due(sentence, transcript.date)
            if not (_ACTION.search(sentence) or (due is not None and not _DECISION.search(sentence))):
                continue
            found.append(Candidate(turn.index, turn.speaker, sentence, owner_of(sentence, turn, transcript), due))
    return found


def owner_of(sentence: str, turn: Turn, transcript: Transcript) -> str | None:
    """The speaker a sentence commits, by the rules above; None when they do not decide."""
    if _FIRST_PERSON.search(sentence):
        return turn.speaker
    named = [s for s in transcript.speakers if s != turn.speaker and _mentions(sentence, s)]
    if len(named) == 1:
        return named[0]
    if _SECOND_PERSON.search(sentence):
        return _addressee(turn, transcript.turns)
    if re.search(r"我(?!们)|\bI\b|\bme\b", sentence):
        return turn.speaker
    return None


def _mentions(sentence: str, speaker: str) -> bool:
    # Full name, or an English first name / a Chinese given name (张伟 -> 伟 is too short; keep the full name).
    first = speaker.split()[0]
    return speaker in sentence or (first != speaker and re.search(rf"\b{re.escape(first)}\b", sentence) is not None)


def _addressee(turn: Turn, turns: tuple[Turn, ...]) -> str | None:
    for other in (turns[turn.index + 1] if turn.index + 1 < len(turns) else None,
                  turns[turn.index - 1] if turn.index > 0 else None):
        if other is not None and other.speaker != turn.speaker:
            return other.speaker
    return None


def decisions(transcript: Transcript) -> list[Statement]:
    """Decision sentences; a short one that only points back ("这个就这么定了", "Agreed.") is given
    the sentence before it in the turn, which says what was decided."""
    found: list[Statement] = []
    for turn in transcript.turns:
        said = sentences(turn.text)
        for i, s in enumerate(said):
            if _DECISION.search(s) and not _QUESTION.search(s):
                text = _joined(said[i - 1], s) if i > 0 and len(_DECISION.sub("", s).strip(" 。.!！,，这个就了")) < 6 else s
                found.append(Statement(turn.index, turn.speaker, text))
    return found


def _joined(a: str, b: str) -> str:
    return a + b if re.match(r"[\u3000-\u9fff]", a[-1]) else f"{a} {b}"


def open_questions(transcript: Transcript) -> list[Statement]:
    return _statements(transcript, lambda s: _OPEN.search(s) is not None)


def _statements(transcript: Transcript, keep) -> list[Statement]:
    return [Statement(t.index, t.speaker, s) for t in transcript.turns for s in sentences(t.text) if keep(s)]
