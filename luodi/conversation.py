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
        self.turns.append({"role": "user", "content": user_text})
        try:
            prompt_ids = self._fitting_prompt(params.max_tokens or 1)
        except PromptTooLongError:
            self.turns.pop()
            raise
        completion = self.llm.complete(prompt_ids, params, on_text)
        self.turns.append({"role": "assistant", "content": completion.text})
        return completion

    def _fitting_prompt(self, room: int) -> list[int]:
        """Drop the oldest exchanges until prompt + `room` answer tokens fit the context window."""
        limit = self.llm.context_window
        while True:
            ids = self.llm.prompt_ids(self._messages(), raw=False)
            if len(ids) + room <= limit:
                return ids
            if len(self.turns) <= 1:
                raise PromptTooLongError(
                    f"this message is {len(ids)} tokens; with {room} for the answer it exceeds the "
                    f"{limit}-token context window — send a shorter message or lower --max-tokens",
                    param="prompt",
                )
            del self.turns[:2]  # the oldest user turn and its answer

    def _messages(self) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns
