"""A multi-turn conversation with a model: its history, kept within the context window.

Owns the message list and which old turns to drop when the next prompt would not leave room for
the answer; the model's chat template decides how the turns become tokens. A model without a
template has no notion of turns: each input is completed as plain text, with no history.

With tools, each answer is held to them (`luodi.toolcall`: the format the template declares, the
grammar, the parser): the text the model writes is split into content, shown as it streams, and
calls, which the caller gets as data and the history keeps as the assistant's `tool_calls`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from luodi.engine.grammar import GrammarSpec
from luodi.engine.sampling import SamplingParams
from luodi.errors import PromptTooLongError
from luodi.llm import LLM, Completion, Message
from luodi.toolcall import ParsedCall, Tool, ToolCalling, ToolCallParser, ToolChoice, detect_format


@dataclass(slots=True)
class Reply:
    completion: Completion  # the generated text, tokens and timings
    content: str  # the text of the answer (all of it, unless it made calls)
    tool_calls: list[ParsedCall] = field(default_factory=list)  # complete, valid calls, in order


class Conversation:
    def __init__(self, llm: LLM, system: str | None = None, tools: Sequence[Tool] = (),
                 tool_choice: ToolChoice = ToolChoice(), *, is_parallel: bool = True) -> None:
        """`is_parallel`: an answer may make several calls (False: one at most)."""
        self.llm = llm
        self.system = system
        self.turns: list[Message] = []  # user/assistant messages, oldest first
        fmt = detect_format(llm.tokenizer.chat_template)
        self.calling = ToolCalling(fmt, tuple(tools), tool_choice, is_parallel) if tools else None

    @property
    def is_chat(self) -> bool:
        return self.llm.has_chat_template

    def reset(self) -> None:
        self.turns.clear()

    def reply(self, user_text: str, params: SamplingParams, on_text: Callable[[str], None] | None = None) -> Reply:
        if not self.is_chat:
            completion = self.llm.complete(self.llm.prompt_ids(user_text, raw=True), params, on_text)
            return Reply(completion, completion.text)
        turns = self.turns + [{"role": "user", "content": user_text}]
        turns, prompt_ids = self._fit(turns, params.max_tokens or 1)  # raises, history untouched
        parser = self.calling.parser() if self.calling is not None else None
        if parser is None:
            completion = self.llm.complete(prompt_ids, params, on_text)
            reply = Reply(completion, completion.text)
        else:
            reply = self._reply_with_tools(prompt_ids, params, parser, on_text)
        self.turns = turns + [_assistant_message(reply)]
        return reply

    def _reply_with_tools(self, prompt_ids: list[int], params: SamplingParams, parser: ToolCallParser,
                          on_text: Callable[[str], None] | None) -> Reply:
        assert self.calling is not None
        grammar = self.calling.grammar(self.llm.tokenizer.special_token_ids)
        if grammar is not None:
            params = dataclasses.replace(params, grammar=GrammarSpec("lark", grammar, param="tools"))

        def show(text: str) -> None:  # content only: a call's text never reaches the screen
            content, _ = parser.feed(text)
            if content and on_text is not None:
                on_text(content)

        completion = self.llm.complete(prompt_ids, params, show)
        rest, _ = parser.finish()
        if rest and on_text is not None:
            on_text(rest)
        return Reply(completion, parser.content, list(parser.calls))

    def _fit(self, turns: list[Message], room: int) -> tuple[list[Message], list[int]]:
        """Drop the oldest exchanges until prompt + `room` answer tokens fit the context window."""
        limit = self.llm.context_window
        while True:
            ids = self._prompt_ids(self._with_system(turns))
            if len(ids) + room <= limit:
                return turns, ids
            if len(turns) <= 1:
                raise PromptTooLongError(
                    f"this message is {len(ids)} tokens; with {room} for the answer it exceeds the "
                    f"{limit}-token context window — send a shorter message or lower --max-tokens",
                    param="prompt",
                )
            turns = turns[2:]  # the oldest user turn and its answer

    def _prompt_ids(self, messages: list[Message]) -> list[int]:
        if self.calling is None:
            return self.llm.prompt_ids(messages, raw=False)
        rendered, tools = self.calling.render(messages)
        return self.llm.prompt_ids(rendered, tools=tools)

    def messages(self) -> list[Message]:
        return self._with_system(self.turns)

    def _with_system(self, turns: list[Message]) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + turns


def _assistant_message(reply: Reply) -> Message:
    if not reply.tool_calls:
        return {"role": "assistant", "content": reply.content}
    calls = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
             for c in reply.tool_calls]
    return {"role": "assistant", "content": reply.content, "tool_calls": calls}
