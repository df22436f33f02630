"""Role-play characters: a card's fields assembled into a chat prompt, and a chat with the character.

Owns the prompt's layout. The character's fixed part comes first and never changes during a chat —
system prompt, description, personality, scenario, the example dialogues as few-shot user/assistant
turns, the greeting — so its KV blocks are computed once and reused by the engine's prefix cache on
every later turn. What varies comes after it: the history, then the lorebook entries the recent
messages call up (a system message just before the newest user message), then the newest message,
then the card's post-history instructions. `{{char}}` and `{{user}}` are replaced everywhere.

Must not know: card file formats (`cards`), lorebook matching (`lorebook`), HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from luodi.apps.cards import Card
from luodi.apps.generation import stop_at_speakers
from luodi.apps.lorebook import LoreEntry, active_entries
from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError
from luodi.llm import LLM, Message

DEFAULT_SYSTEM = "Write {{char}}'s next reply in a fictional chat between {{char}} and {{user}}. Stay in character."
_START = re.compile(r"^\s*<START>\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class PersonaReply:
    reply: str
    prompt_tokens: int
    ttft_s: float
    lore: tuple[LoreEntry, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"reply": self.reply, "prompt_tokens": self.prompt_tokens, "ttft_s": round(self.ttft_s, 6)}


def chat_params(max_tokens: int = 200, temperature: float = 0.7, repetition_penalty: float = 1.1,
                seed: int | None = None) -> SamplingParams:
    """Sampling for role-play: some variety, nucleus-trimmed, a mild penalty against loops."""
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=0.9, top_k=40,
                          repetition_penalty=repetition_penalty, seed=seed)


def substitute(text: str, char: str, user: str) -> str:
    """The card macros: {{char}} / <BOT> and {{user}} / <USER> (any case)."""
    text = re.sub(r"\{\{char\}\}|<BOT>", lambda _: char, text, flags=re.IGNORECASE)
    return re.sub(r"\{\{user\}\}|<USER>", lambda _: user, text, flags=re.IGNORECASE)


def greetings(card: Card) -> list[str]:
    """The first message, then the alternate greetings."""
    return [g for g in [card.text("first_mes"), *(card.data.get("alternate_greetings") or [])] if g.strip()]


def example_turns(mes_example: str, char: str, user: str) -> list[Message]:
    """Example dialogues (blocks after `<START>`, lines `{{user}}: ...` / `{{char}}: ...`) as turns."""
    turns: list[Message] = []
    for block in _START.split(mes_example):
        for speaker, text in re.findall(r"^\s*(\{\{user\}\}|\{\{char\}\}|<USER>|<BOT>):\s*(.*?)(?=^\s*(?:\{\{user\}\}|"
                                        r"\{\{char\}\}|<USER>|<BOT>):|\Z)", block,
                                        flags=re.IGNORECASE | re.MULTILINE | re.DOTALL):
            role = "user" if speaker.lower() in ("{{user}}", "<user>") else "assistant"
            content = substitute(text.strip(), char, user)
            if turns and turns[-1]["role"] == role:  # one speaker's lines in a row are one turn
                turns[-1]["content"] += "\n" + content
            else:
                turns.append({"role": role, "content": content})
    return turns


@dataclass(slots=True)
class Persona:
    card: Card
    user: str = "User"
    greeting_index: int = 0

    def __post_init__(self) -> None:
        count = len(greetings(self.card))
        if count and not 0 <= self.greeting_index < count:
            raise InvalidParameterError(
                f"greeting {self.greeting_index} does not exist; this card has {count} (0 to {count - 1})", "greeting")

    def sub(self, text: str) -> str:
        return substitute(text, self.card.name, self.user)

    def system_text(self) -> str:
        card = self.card
        parts = [card.text("system_prompt").strip() or DEFAULT_SYSTEM, card.text("description").strip()]
        if card.text("personality").strip():
            parts.append(f"{{{{char}}}}'s personality: {card.text('personality').strip()}")
        if card.text("scenario").strip():
            parts.append(f"Scenario: {card.text('scenario').strip()}")
        return self.sub("\n\n".join(p for p in parts if p))

    def greeting(self) -> str | None:
        options = greetings(self.card)
        return self.sub(options[self.greeting_index]) if options else None

    def prefix_messages(self) -> list[Message]:
        """The fixed part: the same for every turn of a chat (what the prefix cache keeps)."""
        messages = [{"role": "system", "content": self.system_text()}]
        messages += example_turns(self.card.text("mes_example"), self.card.name, self.user)
        greeting = self.greeting()
        if greeting:
            messages.append({"role": "assistant", "content": greeting})
        return messages

    def messages(self, history: list[Message], user_text: str,
                 lore: list[LoreEntry]) -> list[Message]:
        messages = self.prefix_messages() + history
        if lore:
            messages.append({"role": "system", "content": self.sub("\n".join(e.content for e in lore))})
        messages.append({"role": "user", "content": user_text})
        post = self.card.text("post_history_instructions").strip()
        if post:
            messages.append({"role": "system", "content": self.sub(post)})
        return messages


@dataclass(frozen=True, slots=True)
class PersonaTurn:
    """One reply to make: the user's message, the prompt for it, its params and the lore it called up."""

    user_text: str
    prompt_ids: list[int]
    params: SamplingParams
    lore: tuple[LoreEntry, ...]


@dataclass(slots=True)
class PersonaChat:
    """A chat with one character: history, lorebook, prompt, reply."""

    llm: LLM
    persona: Persona
    history: list[Message] = field(default_factory=list)

    def lore_for(self, user_text: str) -> list[LoreEntry]:
        recent = [m["content"] for m in self.history] + [user_text]
        return active_entries(self.persona.card.data.get("character_book"), recent, self._count_tokens)

    def _count_tokens(self, text: str) -> int:
        return len(self.llm.tokenizer.encode(text, add_special_tokens=False))

    def prompt_messages(self, user_text: str) -> tuple[list[Message], list[LoreEntry]]:
        lore = self.lore_for(user_text)
        return self.persona.messages(self.history, user_text, lore), lore

    def prompt_text(self, user_text: str) -> str:
        return self.llm.tokenizer.apply_chat_template(self.prompt_messages(user_text)[0])

    def prepare(self, user_text: str, params: SamplingParams) -> PersonaTurn:
        """The prompt for the next reply, the oldest exchanges dropped if it would not fit, and the
        params that stop at the user's name. Generation is the caller's (the CLI here, the server
        through its async engine); `finish` records the reply."""
        if not user_text.strip():
            raise InvalidParameterError("the message is empty; say something to the character", "message")
        messages, lore = self.prompt_messages(user_text)
        prompt_ids = self.llm.prompt_ids(messages)
        if len(prompt_ids) + (params.max_tokens or 1) > self.llm.context_window:
            self._drop_oldest(len(prompt_ids) + (params.max_tokens or 1) - self.llm.context_window)
            messages, lore = self.prompt_messages(user_text)
            prompt_ids = self.llm.prompt_ids(messages)
        # A stop at the user's name: a small model goes on to write the user's next line itself.
        return PersonaTurn(user_text, prompt_ids, stop_at_speakers(params, [self.persona.user]), tuple(lore))

    def finish(self, turn: PersonaTurn, text: str, ttft_s: float = 0.0) -> PersonaReply:
        text = text.strip()
        self.history += [{"role": "user", "content": turn.user_text}, {"role": "assistant", "content": text}]
        return PersonaReply(text, len(turn.prompt_ids), ttft_s, turn.lore)

    def reply(self, user_text: str, params: SamplingParams, on_text=None) -> PersonaReply:
        turn = self.prepare(user_text, params)
        completion = self.llm.complete(turn.prompt_ids, turn.params, on_text)
        return self.finish(turn, completion.text, completion.ttft_s)

    def _drop_oldest(self, excess_tokens: int) -> None:
        """Old exchanges go first; the character's fixed part always stays."""
        while self.history and excess_tokens > 0:
            dropped = self.history[:2]
            del self.history[:2]
            excess_tokens -= sum(self._count_tokens(m["content"]) + 4 for m in dropped)
