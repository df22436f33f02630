"""A scene with several characters (a murder-mystery table, a game's NPCs): each speaks in turn.

Every character knows the setting and everyone's public facts, and only its own secret: a
character's prompt is built from the scene file's public parts and that one character's secret, so
no model, however eloquent or careless, can give away a secret it was never shown. Its own secret
it is told to keep (deflect, or bluff); a reply that repeats it anyway is generated again, and
flagged if it still does.

Prompt layout, for the prefix cache: the character's fixed system message first (the same at every
turn), then one user message holding the transcript so far, which only grows at its end.

Must not know: files beyond the scene's JSON, the CLI, HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from luodi.apps.generation import Generate, stop_at_speakers
from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError
from luodi.llm import LLM, Message

MAX_SCENE_BYTES = 1_000_000
MAX_CHARACTERS = 8
RETRIES_ON_LEAK = 2
_WORDS = re.compile(r"[a-z0-9]+|[\u4e00-\u9fff]", re.IGNORECASE)  # a CJK character counts as a word
LEAK_RUN = 4  # this many of the secret's words in a row, repeated in a reply, give it away


@dataclass(frozen=True, slots=True)
class SceneCharacter:
    name: str
    public: str  # what every character knows about this one
    secret: str  # what only this character knows
    style: str = ""  # how this character talks


@dataclass(frozen=True, slots=True)
class Scene:
    title: str
    setting: str
    characters: tuple[SceneCharacter, ...]
    user: str = "Detective"

    def character(self, name: str) -> SceneCharacter:
        for character in self.characters:
            if character.name == name:
                return character
        raise InvalidParameterError(f"no character named {name!r} in the scene "
                                    f"({', '.join(c.name for c in self.characters)})", "speaker")


@dataclass(frozen=True, slots=True)
class Line:
    speaker: str
    text: str
    leaked: bool = False  # the speaker's secret is in the text after every retry
    prompt_tokens: int = 0
    ttft_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"speaker": self.speaker, "text": self.text, "leaked": self.leaked,
                "prompt_tokens": self.prompt_tokens, "ttft_s": round(self.ttft_s, 6)}


def read_scene(path: str | Path) -> Scene:
    """A scene from its JSON file (see `scene_from_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"scene file {path} does not exist", "scene")
    if path.stat().st_size > MAX_SCENE_BYTES:
        raise InvalidParameterError(f"scene file {path} is over {MAX_SCENE_BYTES:,} bytes", "scene")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidParameterError(f"scene file {path} is not UTF-8 JSON: {exc}", "scene") from None
    return scene_from_dict(data)


def scene_from_dict(data: Any) -> Scene:
    """{"title", "setting", "user"?, "characters": [{"name", "public", "secret", "style"?}, ...]}."""
    if not isinstance(data, dict):
        raise InvalidParameterError("a scene is a JSON object with title, setting and characters", "scene")
    raw = data.get("characters")
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_CHARACTERS:
        raise InvalidParameterError(f"a scene needs 2 to {MAX_CHARACTERS} characters in a 'characters' list",
                                    "characters")
    characters = tuple(_character(item, i) for i, item in enumerate(raw))
    names = [c.name for c in characters]
    user = _text(data, "user", "scene", required=False) or "Detective"
    if len(set(names)) != len(names) or user in names:
        raise InvalidParameterError(f"character names must differ from each other and from the user {user!r}: "
                                    f"{', '.join(names)}", "characters")
    return Scene(_text(data, "title", "scene"), _text(data, "setting", "scene"), characters, user)


def _character(item: Any, index: int) -> SceneCharacter:
    where = f"characters[{index}]"
    if not isinstance(item, dict):
        raise InvalidParameterError(f"{where} must be an object with name, public and secret", where)
    name = _text(item, "name", where)
    if ":" in name or "\n" in name:
        raise InvalidParameterError(f"{where}.name {name!r} may not hold ':' or a line break", where)
    return SceneCharacter(name, _text(item, "public", where), _text(item, "secret", where),
                          _text(item, "style", where, required=False))


def _text(data: dict, key: str, where: str, *, required: bool = True) -> str:
    value = data.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidParameterError(f"{where}.{key} must be a non-empty string", where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows "\ud800"; no UTF-8 text holds a lone surrogate
        raise InvalidParameterError(f"{where}.{key} holds a lone UTF-16 surrogate, which is not text", where) from None
    return value.strip()


def system_message(scene: Scene, character: SceneCharacter) -> str:
    """What `character` is told: the setting, everyone's public facts, its own secret and nobody else's."""
    others = "\n".join(f"- {c.name}: {c.public}" for c in scene.characters if c is not character)
    parts = [f"{scene.title}. {scene.setting}",
             f"You are {character.name}. {character.public}",
             f"The others at the table:\n{others}",
             f"{scene.user} is asking the questions.",
             f"Your secret, which only you know: {character.secret}\nNever say it outright. If asked, stay "
             f"calm, deflect, or bluff.",
             f"Speak as {character.name} only, in one or two sentences."]
    if character.style:
        parts.insert(2, f"How you talk: {character.style}")
    return "\n\n".join(parts)


def reveals(reply: str, secret: str, run: int = LEAK_RUN) -> bool:
    """Whether `reply` repeats `run` consecutive words of `secret` (CJK characters count as words)."""
    secret_words = [w.lower() for w in _WORDS.findall(secret)]
    reply_text = " ".join(w.lower() for w in _WORDS.findall(reply))
    runs = {" ".join(secret_words[i:i + run]) for i in range(len(secret_words) - run + 1)}
    return any(f" {r} " in f" {reply_text} " for r in runs)


@dataclass(slots=True)
class SceneChat:
    """The table: the transcript so far, and each character's turn."""

    llm: LLM
    scene: Scene
    transcript: list[Line] = field(default_factory=list)
    generate: Generate | None = None  # the server's, through its async engine; None: `llm` directly

    def messages_for(self, character: SceneCharacter) -> list[Message]:
        lines = "\n".join(f"{line.speaker}: {line.text}" for line in self.transcript) or "(The scene begins.)"
        return [{"role": "system", "content": system_message(self.scene, character)},
                {"role": "user", "content": f"{lines}\n\nNow {character.name} speaks."}]

    def say(self, text: str) -> Line:
        """The user's line, heard by every character."""
        if not text.strip():
            raise InvalidParameterError("the line is empty; say something to the table", "message")
        line = Line(self.scene.user, text.strip())
        self.transcript.append(line)
        return line

    def speak(self, name: str, params: SamplingParams) -> Line:
        """`name`'s next line, sampled again (a new seed; greedy becomes sampled) while it gives the secret away."""
        character = self.scene.character(name)
        prompt_ids = self.llm.prompt_ids(self.messages_for(character))
        params = stop_at_speakers(params, [self.scene.user] + [c.name for c in self.scene.characters])
        for attempt in range(RETRIES_ON_LEAK + 1):
            attempt_params = params if attempt == 0 else replace(
                params, temperature=max(params.temperature, 0.8), seed=(params.seed or 0) + attempt)
            reply, ttft_s = self._complete(prompt_ids, attempt_params)
            text = _own_words(reply, character.name)
            if not reveals(text, character.secret):
                break
        line = Line(name, text, reveals(text, character.secret), len(prompt_ids), ttft_s)
        self.transcript.append(line)
        return line

    def _complete(self, prompt_ids: list[int], params: SamplingParams) -> tuple[str, float]:
        """The reply's text and its time to first token (0 when `generate` does not report one)."""
        if self.generate is None:
            completion = self.llm.complete(prompt_ids, params)
            return completion.text, completion.ttft_s
        return self.generate([prompt_ids], [params])[0], 0.0

    def round(self, params: SamplingParams, on_line: Callable[[Line], None] | None = None) -> list[Line]:
        """Every character once, in the scene's order (`on_line` sees each line as it is said)."""
        lines = []
        for character in self.scene.characters:
            lines.append(self.speak(character.name, params))
            if on_line is not None:
                on_line(lines[-1])
        return lines


def _own_words(text: str, name: str) -> str:
    """The reply without a leading "Name:" the model may write, or the blank it may leave."""
    text = text.strip()
    if text.lower().startswith(f"{name.lower()}:"):
        text = text[len(name) + 1:].strip()
    return text or "..."
