"""A multi-turn conversation with a model: its history, kept within the context window.

Owns the message list and which old turns to drop when the next prompt would not leave room for
the answer; the model's chat template decides how the turns become tokens. A model without a
template has no notion of turns: each input is completed as plain text, with no history.
"""

from __future__ import annotations

from collections.abc import Callable

from luodi.engine.sampling import SamplingParams
from luodi.errors import PromptTooLongError
from luodi.llm import LLM, Completion, Message


class Conversation:
    def __init__(self, llm: LLM, system: str | None = None) -> None:
        self.llm = llm
        self.system = system
        self.turns: list[Message] = []  # user/assistant messages, oldest first

    @property
    def is_chat(self) -> bool:
        return self.llm.has_chat_template

    def reset(self) -> None:
        self.turns.clear()

    def reply(self, user_text: str, params: SamplingParams, on_text: Callable[[str], None] | None = None) -> Completion:
        if not self.is_chat:
            return self.llm.complete(self.llm.prompt_ids(user_text, raw=True), params, on_text)
        turns = self.turns + [{"role": "user", "content": user_text}]
        turns, prompt_ids = self._fit(turns, params.max_tokens or 1)  # raises, history untouched
        completion = self.llm.complete(prompt_ids, params, on_text)
        self.turns = turns + [{"role": "assistant", "content": completion.text}]
        return completion

    def _fit(self, turns: list[Message], room: int) -> tuple[list[Message], list[int]]:
        """Drop the oldest exchanges until prompt + `room` answer tokens fit the context window."""
        limit = self.llm.context_window
        while True:
            ids = self.llm.prompt_ids(self._with_system(turns), raw=False)
            if len(ids) + room <= limit:
                return turns, ids
            if len(turns) <= 1:
                raise PromptTooLongError(
                    f"this message is {len(ids)} tokens; with {room} for the answer it exceeds the "
                    f"{limit}-token context window — send a shorter message or lower --max-tokens",
                    param="prompt",
                )
            turns = turns[2:]  # the oldest user turn and its answer

    def messages(self) -> list[Message]:
        return self._with_system(self.turns)

    def _with_system(self, turns: list[Message]) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + turns
