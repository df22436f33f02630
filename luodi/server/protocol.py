"""The OpenAI wire format the server reads, as pydantic models: requests validated at the boundary
(what it sends is `luodi.server.responses`).

Owns field names, types and defaults as OpenAI's API reference gives them, plus the sampling
extras that vLLM-compatible clients send (`top_k`, `min_p`, `repetition_penalty`, `min_tokens`,
`ignore_eos`, `stop_token_ids`). Range checks live in `SamplingParams` (one place), so a bad value
is reported with the same message through the API and the CLI.

Also owns the checks on a request's text and size that need no model: a lone UTF-16 surrogate
(JSON allows "\\ud800"; no UTF-8 text contains one, so no tokenizer, database or response can
carry it) is refused wherever it appears, with the field that held it; empty prompts are refused;
and `RequestLimits` caps what costs the server per request beyond the body size (stop strings
are matched against every new token on the engine thread that all requests share). A chat's tools
are checked here too (their schemas, `tool_choice`, and that each `tool` turn answers a call an
earlier assistant turn made); how calls are written and read back is `luodi.toolcall`'s.

Must not know about the engine, tokenization or HTTP: it turns JSON into typed values and back.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from luodi.engine.grammar import GrammarSpec
from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError
from luodi.server.limits import RequestLimits
from luodi.toolcall import Tool, ToolChoice, parse_tools


def find_lone_surrogate(value: Any, path: tuple[str, ...] = ()) -> str | None:
    """The dotted path of the first string (or key) in `value` holding a lone surrogate, else None."""
    if isinstance(value, str):
        return None if _is_utf8(value) else (".".join(path) or "body")
    if isinstance(value, dict):
        for key, item in value.items():
            where = path + (str(key).encode("utf-8", "replace").decode(),)
            if isinstance(key, str) and not _is_utf8(key):
                return ".".join(where)
            if (found := find_lone_surrogate(item, where)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := find_lone_surrogate(item, path + (str(index),))) is not None:
                return found
    return None


def _is_utf8(text: str) -> bool:
    # Fast in C for megabytes of text; only a lone surrogate makes a str unencodable as UTF-8.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Request(BaseModel):
    # Unknown fields (`user`, `metadata`, `store`, ...) are accepted and ignored, as OpenAI does.
    model_config = ConfigDict(extra="ignore")


class _Body(_Request):
    """A whole request body: checked once for lone surrogates, before its fields are parsed."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_lone_surrogates(cls, data: Any) -> Any:
        # Raised as is (not a ValueError), so the error names the field: a 400 with `param`.
        where = find_lone_surrogate(data)
        if where is not None:
            raise InvalidParameterError(
                f"{where} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not "
                "text; send valid Unicode (pair the surrogates, or replace the character)",
                param=where,
            )
        return data


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class FunctionCall(_Request):
    name: str
    arguments: str  # JSON text, as OpenAI sends and returns it


class ToolCall(_Request):
    """A call the assistant made: in a response, and in the history a client sends back."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the id of the call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(_Request):
    """OpenAI's `response_format.json_schema`. `strict` is accepted either way: the schema is always
    enforced by the grammar (strict or not, the output validates)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] | bool = Field(True, alias="schema")
    strict: bool | None = None


class FunctionDefinition(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of an object; None: no arguments
    strict: bool | None = None  # accepted either way: the arguments are always enforced by the grammar


class ChatTool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Request):
    """Luodi's extension (vLLM's names): exactly one of a regex, a list of choices, a Lark grammar,
    or a JSON schema the output must match."""

    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_: dict[str, Any] | None = Field(None, alias="json")


class _SamplingFields(_Body):
    """Fields shared by chat and completions; `None` means "OpenAI's default"."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # Extras beyond OpenAI's API, named as vLLM names them.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    # Luodi's extension (as vLLM's): share cached prompt blocks only with requests that send the same
    # salt. It narrows the caller's own partition (its API key's); it can never reach another's.
    cache_salt: str | None = Field(None, max_length=256)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None  # Luodi's (and vLLM's) extension
    speculative: str | None = None  # Luodi's extension: "ngram" | "none"; null: the server's default
    # Luodi's extensions for a gateway over replicas (`luodi.cluster`): every choice and streamed chunk
    # carries the token ids it adds; and a request may continue the output another replica began
    # (its token ids so far: recomputed, counted in max_tokens, their text not sent again).
    return_token_ids: bool = False
    resume_token_ids: list[int] | None = None

    def _check_resume(self) -> None:
        if not self.resume_token_ids:
            return
        if (self.n or 1) != 1:  # the ids themselves are the engine's to check (`LLMEngine.check_request`)
            raise InvalidParameterError("resume_token_ids continue one choice; send n=1", param="resume_token_ids")

    def check_limits(self, limits: RequestLimits, vocab_size: int) -> None:
        """Refuse what exceeds `limits` (or names tokens outside the vocabulary), naming the cap."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        _at_most(len(stop), limits.max_stop_strings, "stop", "stop strings")
        longest = max((len(s) for s in stop), default=0)
        if longest > limits.max_stop_chars:
            raise InvalidParameterError(
                f"a stop string of {longest} characters exceeds the limit of {limits.max_stop_chars}; "
                "send shorter stop strings", param="stop")
        ids = self.stop_token_ids or []
        _at_most(len(ids), limits.max_stop_token_ids, "stop_token_ids", "stop token ids")
        _check_token_ids(ids, vocab_size, "stop_token_ids")
        if self.n is not None and not 1 <= self.n <= limits.max_n:
            raise InvalidParameterError(
                f"n={self.n} is outside [1, {limits.max_n}]; ask for at most {limits.max_n} choices", param="n")
        bias = self.logit_bias or {}
        _at_most(len(bias), limits.max_logit_bias, "logit_bias", "logit_bias entries")
        _check_token_ids([_token_id_key(key) for key in bias], vocab_size, "logit_bias")
        for key, value in bias.items():
            if not -100 <= value <= 100:
                raise InvalidParameterError(
                    f"logit_bias[{key!r}] = {value} is outside [-100, 100]", param="logit_bias")
        self._check_resume()
        grammar = self.grammar_spec()
        if grammar is not None and len(grammar.text) > limits.max_grammar_chars:
            raise InvalidParameterError(
                f"the {grammar.kind} grammar is {len(grammar.text)} characters, over the limit of "
                f"{limits.max_grammar_chars}; send a smaller schema or grammar", param=grammar.param)

    def grammar_spec(self) -> GrammarSpec | None:
        """The grammar the output must match: from `response_format` or `structured_outputs`."""
        fmt = self.response_format
        wanted = fmt is not None and fmt.type != "text"
        if wanted and self.structured_outputs is not None:
            raise InvalidParameterError(
                "send either response_format or structured_outputs, not both", param="structured_outputs")
        if self.structured_outputs is not None:
            return _structured_spec(self.structured_outputs)
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return GrammarSpec("json_object")
        if fmt.json_schema is None:
            raise InvalidParameterError(
                'response_format {"type": "json_schema"} needs a "json_schema" object with a "schema"',
                param="response_format")
        return GrammarSpec("json_schema", json.dumps(fmt.json_schema.json_schema, ensure_ascii=False))

    def check_supported(self) -> None:
        """Reject what parses but this server does not do, naming the field."""
        if self.stream_options is not None and not self.stream:
            raise InvalidParameterError(
                "stream_options is only allowed with stream=true", param="stream_options"
            )

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=_default(self.temperature, 1.0),
            top_p=_default(self.top_p, 1.0),
            top_k=_default(self.top_k, 0),
            min_p=_default(self.min_p, 0.0),
            repetition_penalty=_default(self.repetition_penalty, 1.0),
            presence_penalty=_default(self.presence_penalty, 0.0),
            frequency_penalty=_default(self.frequency_penalty, 0.0),
            seed=self.seed,
            stop=tuple(stop),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            min_tokens=_default(self.min_tokens, 0),
            grammar=self.grammar_spec(),
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            speculative=self.speculative,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _structured_spec(outputs: StructuredOutputs) -> GrammarSpec:
    given = {
        "regex": outputs.regex,
        "choice": outputs.choice,
        "grammar": outputs.grammar,
        "json": outputs.json_,
    }
    named = [key for key, value in given.items() if value is not None]
    if len(named) != 1:
        raise InvalidParameterError(
            f"structured_outputs needs exactly one of regex, choice, grammar, json; got {named or 'none'}",
            param="structured_outputs")
    key = named[0]
    param = f"structured_outputs.{key}"
    if key == "regex":
        return GrammarSpec("regex", outputs.regex or "", param=param)
    if key == "choice":
        return GrammarSpec("choice", json.dumps(outputs.choice, ensure_ascii=False), param=param)
    if key == "grammar":
        return GrammarSpec("lark", outputs.grammar or "", param=param)
    return GrammarSpec("json_schema", json.dumps(outputs.json_, ensure_ascii=False), param=param)


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _at_most(count: int, limit: int, param: str, what: str) -> None:
    if count > limit:
        raise InvalidParameterError(
            f"{count} {what} exceed the limit of {limit} per request; send at most {limit}", param=param)


def _token_id_key(key: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise InvalidParameterError(
            f"logit_bias key {key!r} is not a token id; keys are token ids as strings, e.g. \"50256\"",
            param="logit_bias") from None


def _check_token_ids(ids: list[int], vocab_size: int, param: str) -> None:
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise InvalidParameterError(
            f"{param} names token id {bad}, outside this model's vocabulary [0, {vocab_size})", param=param)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[ChatTool] | None = None
    # "none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}; checked in
    # `tool_choice_value` so that a bad one gets a message naming it, not a pydantic union's.
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None  # OpenAI's deprecated form of tools: refused, naming tools
    function_call: Any = None
    # Luodi's extension: answer the last user turn from this knowledge base, with sources.
    kb: str | None = Field(None, description="Knowledge base to answer from (its passages, cited [n]).")
    kb_k: int = Field(8, ge=1, le=32, description="Passages to retrieve from the knowledge base.")

    def check_limits(self, limits: RequestLimits, vocab_size: int) -> None:
        super().check_limits(limits, vocab_size)
        _at_most(len(self.messages), limits.max_messages, "messages", "messages")
        tools = self.tools or []
        _at_most(len(tools), limits.max_tools, "tools", "tools")
        size = sum(len(tool.model_dump_json()) for tool in tools)
        if size > limits.max_tools_chars:
            raise InvalidParameterError(
                f"the tools' definitions are {size} characters, over the limit of {limits.max_tools_chars}; "
                "send fewer tools or shorter descriptions and schemas", param="tools")
        if self.resume_token_ids and (self.tools or self.kb):
            raise InvalidParameterError("resume_token_ids cannot continue a tool-calling or kb answer; "
                                        "send the request again from its start", param="resume_token_ids")

    def check_supported(self) -> None:
        super().check_supported()
        if not any(m.text().strip() or m.tool_calls for m in self.messages):
            raise InvalidParameterError(
                "the messages hold no text; send at least one message with content", param="messages")
        if self.functions is not None or self.function_call is not None:
            raise InvalidParameterError(
                "functions and function_call (deprecated by OpenAI) are not supported; send tools and "
                "tool_choice instead", param="functions" if self.functions is not None else "function_call")
        _check_tool_history(self.messages)
        if self.tools and self.tool_choice_value().mode != "none":
            if self.kb:
                raise InvalidParameterError("kb answers cannot call tools; send either kb or tools", param="tools")
            if self.response_format is not None and self.response_format.type != "text" \
                    or self.structured_outputs is not None:
                raise InvalidParameterError(
                    "tools and response_format / structured_outputs both constrain the answer; send one of them "
                    '(or tool_choice "none")', param="tools")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParameterError("top_logprobs needs logprobs=true", param="top_logprobs")

    def function_tools(self) -> list[Tool]:
        """The tools, checked: valid names, none twice, parameters a JSON Schema of an object."""
        return parse_tools([(t.function.name, t.function.description, t.function.parameters)
                            for t in self.tools or []])

    def tool_choice_value(self) -> ToolChoice:
        """OpenAI's default: auto with tools, none without; a named function means that call, required."""
        choice = self.tool_choice
        if choice is None:
            return ToolChoice("auto" if self.tools else "none")
        if isinstance(choice, str):
            return ToolChoice(choice)
        function = choice.get("function")
        if choice.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str):
            raise InvalidParameterError(
                'tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                '{"name": "..."}}', param="tool_choice")
        return ToolChoice("required", function["name"])

    def to_sampling_params(self) -> SamplingParams:
        self.check_supported()
        # max_completion_tokens replaces the deprecated max_tokens; either works, the newer wins.
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self.sampling_params(max_tokens, logprobs)

    def chat_messages(self) -> list[dict[str, Any]]:
        """The history as chat templates take it: text content, calls with their JSON-text arguments."""
        messages = []
        for m in self.messages:
            # The "developer" role is OpenAI's new name for "system"; chat templates know only the latter.
            message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.tool_calls:
                message["tool_calls"] = [call.model_dump() for call in m.tool_calls]
            if m.role == "tool":
                message["tool_call_id"] = m.tool_call_id
                if m.name:
                    message["name"] = m.name
            messages.append(message)
        return messages

    @property
    def has_tool_history(self) -> bool:
        return any(m.tool_calls or m.role == "tool" for m in self.messages)


def _check_tool_history(messages: list[ChatMessage]) -> None:
    """Calls only on assistant turns; each tool turn answers a call an earlier assistant turn made."""
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if message.tool_calls and message.role != "assistant":
            raise InvalidParameterError(
                f"{where} is a {message.role} message with tool_calls; only assistant messages carry them",
                param=f"{where}.tool_calls")
        call_ids.update(call.id for call in message.tool_calls or ())
        if message.role != "tool":
            continue
        if not message.tool_call_id:
            raise InvalidParameterError(
                f"{where} is a tool message without tool_call_id; give the id of the call it answers",
                param=f"{where}.tool_call_id")
        if message.tool_call_id not in call_ids:
            raise InvalidParameterError(
                f"{where} answers tool call {message.tool_call_id!r}, which no earlier assistant message made; "
                "send the assistant message with that call before its result", param=f"{where}.tool_call_id")


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's completions default
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo and self.logprobs is not None:
            raise InvalidParameterError(
                "echo with logprobs (the prompt's logprobs) is not supported; drop one of them", param="echo")
        if self.suffix:
            raise InvalidParameterError("suffix (insertion) is not supported; remove it", param="suffix")
        if self.best_of not in (None, 1):
            raise InvalidParameterError("best_of is not supported; send best_of=1", param="best_of")

    def to_sampling_params(self) -> SamplingParams:
        self.check_supported()
        max_tokens = self.max_tokens
        if "max_tokens" not in self.model_fields_set and self.grammar_spec() is not None:
            max_tokens = None  # OpenAI's default of 16 would cut nearly every JSON answer short
        return self.sampling_params(max_tokens, self.logprobs)

    def check_limits(self, limits: RequestLimits, vocab_size: int) -> None:
        super().check_limits(limits, vocab_size)
        _at_most(len(self.prompts()), limits.max_prompts, "prompt", "prompts")
        if self.resume_token_ids and (len(self.prompts()) > 1 or self.echo):
            raise InvalidParameterError("resume_token_ids continue one prompt's answer, without echo",
                                        param="resume_token_ids")

    def prompts(self) -> list[str | list[int]]:
        """The prompts (texts or token id lists) in order; one unless a list of them was sent."""
        prompt = self.prompt
        batch = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list) else [prompt]
        if not batch or any(not one for one in batch):  # "", [] or an empty one in the list
            raise InvalidParameterError(
                "the prompt is empty; give text or at least one token id (for each prompt of a list)",
                param="prompt")
        return batch  # type: ignore[return-value]


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    def inputs(self) -> list[str | list[int]]:
        """The input as a list of texts and token id arrays (one array: `[1, 2]`; several: `[[1], [2]]`)."""
        inputs = self.input
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]  # type: ignore[list-item]
        if not inputs or any(not (one.strip() if isinstance(one, str) else one) for one in inputs):
            raise InvalidParameterError(
                "input is empty or holds an empty string or token array; send text or token ids", param="input")
        if len(inputs) > 2048:
            raise InvalidParameterError(f"{len(inputs)} inputs: send at most 2048 per request", param="input")
        return inputs  # type: ignore[return-value]
