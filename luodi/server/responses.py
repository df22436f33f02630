"""The OpenAI wire format the server sends, as pydantic models: responses, stream chunks, tool-call
deltas, errors (one type per shape; a field OpenAI leaves out when empty is left out here too).
The requests it reads are `luodi.server.protocol`'s.

Must not know about the engine, tokenization or HTTP: typed values that serialize to OpenAI's JSON.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from luodi.server.protocol import ToolCall


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "luodi"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


def _is_none(value: Any) -> bool:
    return value is None


def _omitted_if_none() -> Any:
    """A field OpenAI leaves out of the JSON, rather than sending null, when it has no value."""
    return Field(None, exclude_if=_is_none)


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # None when the answer is calls only
    tool_calls: list[ToolCall] | None = _omitted_if_none()


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None
    token_ids: list[int] | None = _omitted_if_none()  # with return_token_ids


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    sources: list[dict[str, Any]] | None = None  # with `kb`: [n] → source, page, section, text, cited


class FunctionDelta(BaseModel):
    name: str | None = _omitted_if_none()
    arguments: str | None = _omitted_if_none()


class ToolCallDelta(BaseModel):
    """A piece of call `index`: its id, type and name come once, in its first piece."""

    index: int
    id: str | None = _omitted_if_none()
    type: Literal["function"] | None = _omitted_if_none()
    function: FunctionDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = _omitted_if_none()
    content: str | None = _omitted_if_none()
    tool_calls: list[ToolCallDelta] | None = _omitted_if_none()


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = _omitted_if_none()  # with return_token_ids


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = _omitted_if_none()  # the last chunk's, with stream_options.include_usage
    sources: list[dict[str, Any]] | None = _omitted_if_none()  # a kb answer's, in its first chunk


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None
    token_ids: list[int] | None = _omitted_if_none()  # with return_token_ids


class Completion(BaseModel):
    """A whole completion, and each chunk of a streamed one (OpenAI uses the one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = _omitted_if_none()


class HealthStatus(BaseModel):
    status: Literal["ok", "loading", "failed"]
    model: str
    detail: str | None = None
    load: dict[str, Any] | None = _omitted_if_none()  # once ready: the figures a gateway routes by
    kernels: dict[str, str] | None = _omitted_if_none()  # once ready: each kernel group's path and why


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# The error statuses every route documents in the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "Invalid request"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model or knowledge base"),
        (409, "Knowledge base exists"),
        (413, "Request body too large"),
        (429, "Queue full; retry after Retry-After seconds"),
        (503, "Model still loading"),
    )
}
