"""Fine-tuning data: a JSONL file -> token ids and labels, with the loss only on what the model says.

Owns: reading and validating the two JSONL formats (OpenAI chat `{"messages": [...]}` and
`{"prompt": ..., "completion": ...}`, detected per line), rendering them through the model's chat
template, and deciding which tokens carry loss. Must not know: models, LoRA, optimizers, devices,
batching — the training loop takes `TrainingExample`s and pads them itself.

Which tokens are trained: the chat template decides. For assistant turn i, the tokens of
`messages[:i]` rendered with the generation prompt end where the assistant's own tokens begin; the
tokens of `messages[:i+1]` end where they stop. Between the two lie the content and the template's
end-of-turn token (SmolLM2: `Hello!<|im_end|>`); anything the template writes after the last EOS id
in that span (SmolLM2's `\\n`) is not trained, since generation stops at EOS and never produces it
(TRL's ChatML training template draws the same line). Every assistant turn is trained unless it has
`"weight": 0`, as in OpenAI's fine-tuning format. Both renderings must be token prefixes of the whole
conversation's tokens; when a template (or content that merges with the template's header) breaks
that, the line is rejected rather than mis-masked.

Errors: all problems in the file are collected, up to `MAX_REPORTED_ERRORS`, into one `DataError`
whose message has one `FILE:LINE: problem — fix` line per problem, so a user fixes a dataset in one
pass instead of one rerun per bad line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luodi.errors import InvalidParameterError, LuodiError
from luodi.loading.tokenizer import ChatTemplateError, Tokenizer

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index
MAX_REPORTED_ERRORS = 10
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class DataError(LuodiError):
    """A fine-tuning data file that cannot be used; the message names each bad FILE:LINE."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


@dataclass(frozen=True, slots=True)
class TrainingExample:
    input_ids: list[int]
    labels: list[int]  # same length as input_ids; IGNORE_INDEX where no loss is taken
    source: str  # "train.jsonl:12"


class _LineError(Exception):
    """One bad line; `load_dataset` prefixes FILE:LINE and gathers these into a `DataError`."""


def load_dataset(path: str | Path, tokenizer: Tokenizer, *, max_seq_len: int) -> list[TrainingExample]:
    """Every example of a JSONL file, tokenized and masked; blank lines are skipped. Raises one
    `DataError` listing up to `MAX_REPORTED_ERRORS` bad lines. Examples longer than `max_seq_len`
    tokens are errors, never truncated."""
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise InvalidParameterError(
            f"max_seq_len must be a positive integer, got {max_seq_len!r}", param="max_seq_len"
        )
    name = str(path)
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{name}: no such file — give the path of a JSONL training file")
    examples: list[TrainingExample] = []
    problems: list[str] = []
    num_problems = 0
    for number, raw in _numbered_lines(file):
        source = f"{name}:{number}"
        try:
            record = _parse_line(raw)
            if record is None:
                continue
            input_ids, labels = _encode_record(record, tokenizer)
            _check_length(len(input_ids), max_seq_len)
        except _LineError as exc:
            num_problems += 1
            if len(problems) < MAX_REPORTED_ERRORS:
                problems.append(f"{source}: {exc}")
            continue
        examples.append(TrainingExample(input_ids, labels, source))
    if num_problems:
        raise DataError(_join_problems(name, problems, num_problems), tuple(problems))
    if not examples:
        raise DataError(
            f"{name}: the file has no examples (it is empty or only blank lines) — write one JSON "
            'object per line: {"messages": [...]} or {"prompt": ..., "completion": ...}'
        )
    return examples


def _join_problems(name: str, problems: list[str], num_problems: int) -> str:
    if num_problems == 1:
        return problems[0]
    lines = [f"{name}: {num_problems} bad lines; fix them all and rerun:", *problems]
    if num_problems > len(problems):
        lines.append(f"... and {num_problems - len(problems)} more")
    return "\n".join(lines)


def _numbered_lines(file: Path) -> Iterator[tuple[int, str | bytes]]:
    """(1-based line number, text), or the raw bytes of a line that is not UTF-8."""
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as Windows editors write
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, raw


def _parse_line(raw: str | bytes) -> dict[str, Any] | None:
    """The line's JSON object, or None for a blank line."""
    if isinstance(raw, bytes):
        raise _LineError("the line is not UTF-8 text — save the file as UTF-8")
    if not raw.strip():
        return None
    try:
        record = json.loads(raw.rstrip())  # columns stay right: only the line's end is cut
    except json.JSONDecodeError as exc:
        raise _LineError(
            f"not valid JSON ({exc.msg} at column {exc.colno}) — write one JSON object per line"
        ) from None
    if not isinstance(record, dict) or not ({"messages", "prompt", "completion"} & record.keys()):
        raise _LineError(
            "the line is neither chat nor prompt/completion format — write "
            '{"messages": [{"role": ..., "content": ...}, ...]} or {"prompt": "...", "completion": "..."}'
        )
    if "messages" in record and ({"prompt", "completion"} & record.keys()):
        raise _LineError('has both "messages" and "prompt"/"completion" — keep one format per line')
    return record


def _encode_record(record: dict[str, Any], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    if "messages" in record:
        messages, weights = _chat_messages(record["messages"])
        return _encode_chat(messages, weights, tokenizer)
    prompt, completion = _prompt_completion(record)
    if tokenizer.has_chat_template:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return _encode_chat(messages, [True], tokenizer)
    return _encode_plain(prompt, completion, tokenizer)


# -- validation ------------------------------------------------------------------------------------


def _chat_messages(value: Any) -> tuple[list[dict[str, str]], list[bool]]:
    """Messages reduced to {role, content} (developer -> system), and whether each assistant turn is
    trained."""
    if not isinstance(value, list) or not value:
        raise _LineError('"messages" must be a non-empty list — write [{"role": ..., "content": ...}, ...]')
    messages: list[dict[str, str]] = []
    weights: list[bool] = []
    for index, message in enumerate(value, start=1):
        where = f"message {index}"
        if not isinstance(message, dict):
            raise _LineError(f'{where} is not an object — write {{"role": ..., "content": ...}}')
        role = message.get("role")
        if role not in _ROLES:
            allowed = ", ".join(repr(r) for r in _ROLES)
            raise _LineError(f"{where} has unknown role {role!r} — use one of {allowed}")
        content = message.get("content")
        if not isinstance(content, str):
            raise _LineError(
                f"{where} ({role}) has no string content (got {type(content).__name__}) — "
                'give "content" as a string'
            )
        if role == "assistant":
            if not content.strip():
                raise _LineError(f"{where} is an empty assistant turn — give the reply to train on")
            weights.append(_weight(message, where))
        messages.append({"role": _ROLES[role], "content": content})
    if "assistant" not in (m["role"] for m in messages):
        raise _LineError("the conversation has no assistant turn — add the reply to train on")
    if messages[-1]["role"] != "assistant":
        raise _LineError(
            f"the conversation ends with a {messages[-1]['role']} turn (message {len(messages)}) — "
            "end it with the assistant's reply, or drop the trailing turn"
        )
    if not any(weights):
        raise _LineError('every assistant turn has "weight": 0, so nothing is trained — drop the line')
    return messages, weights


def _weight(message: dict[str, Any], where: str) -> bool:
    weight = message.get("weight", 1)
    if isinstance(weight, bool) or weight not in (0, 1):
        raise _LineError(f'{where} has "weight": {weight!r} — use 0 (not trained) or 1 (trained)')
    return weight == 1


def _prompt_completion(record: dict[str, Any]) -> tuple[str, str]:
    for key in ("prompt", "completion"):
        if not isinstance(record.get(key), str):
            got = "nothing" if key not in record else type(record[key]).__name__
            raise _LineError(f'"{key}" must be a string (got {got}) — give both "prompt" and "completion"')
    if not record["completion"].strip():
        raise _LineError('"completion" is empty — give the text to train on')
    return record["prompt"], record["completion"]


def _check_length(num_tokens: int, max_seq_len: int) -> None:
    if num_tokens > max_seq_len:
        raise _LineError(
            f"the example is {num_tokens} tokens, longer than --max-seq-len {max_seq_len} — shorten or "
            "split it, or raise --max-seq-len (examples are never truncated)"
        )


# -- tokenizing and masking ------------------------------------------------------------------------


def _encode_chat(
    messages: list[dict[str, str]], weights: list[bool], tokenizer: Tokenizer
) -> tuple[list[int], list[int]]:
    """The conversation's tokens (exactly `encode_chat(messages, add_generation_prompt=False)`) and
    labels that train each weighted assistant turn: its content and end-of-turn token."""
    input_ids = _render(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(input_ids)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for turn, is_trained in zip(turns, weights, strict=True):
        if not is_trained:
            continue
        start = _prefix_length(tokenizer, messages, turn, input_ids, add_generation_prompt=True)
        end = _prefix_length(tokenizer, messages, turn + 1, input_ids, add_generation_prompt=False)
        end = _after_last_eos(input_ids, start, end, tokenizer.eos_token_ids)
        if end <= start:
            raise _LineError(
                f"the chat template renders assistant message {turn + 1} as no tokens — "
                "check the template (--chat-template)"
            )
        labels[start:end] = input_ids[start:end]
    return input_ids, labels


def _render(
    tokenizer: Tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool
) -> list[int]:
    try:
        return tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt)
    except ChatTemplateError as exc:
        raise _LineError(f"{exc} — fix the conversation or pass a different --chat-template") from None


def _prefix_length(
    tokenizer: Tokenizer,
    messages: list[dict[str, str]],
    count: int,
    full_ids: list[int],
    *,
    add_generation_prompt: bool,
) -> int:
    """How many of `full_ids` the first `count` messages render to; a `_LineError` when that rendering
    is not a prefix of the whole conversation's tokens (the masks would be wrong)."""
    ids = _render(tokenizer, messages[:count], add_generation_prompt=add_generation_prompt)
    if full_ids[: len(ids)] == ids:
        return len(ids)
    part = ("message 1" if count == 1 else f"messages 1-{count}") + (
        " plus the generation prompt" if add_generation_prompt else ""
    )
    full_text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    text = tokenizer.apply_chat_template(messages[:count], add_generation_prompt=add_generation_prompt)
    if not full_text.startswith(text):
        raise _LineError(
            f"the chat template renders {part} as text that is not a prefix of the whole conversation, "
            "so the assistant turns cannot be located (templates that rewrite earlier turns do this) — "
            "pass a --chat-template that renders each turn independently"
        )
    raise _LineError(
        f"the tokens of {part} are not a prefix of the whole conversation's tokens: text at the turn "
        "boundary merges into one token (often leading whitespace in the next message's content) — "
        "strip leading whitespace from the message after that boundary"
    )


def _after_last_eos(ids: list[int], start: int, end: int, eos_ids: frozenset[int]) -> int:
    """`end` cut back to just after the last EOS id in ids[start:end], if there is one."""
    for index in range(end - 1, start - 1, -1):
        if ids[index] in eos_ids:
            return index + 1
    return end


def _encode_plain(prompt: str, completion: str, tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Without a chat template: `prompt + completion` as plain text, ending in EOS, loss from the
    first token that is not the prompt's own. The text is tokenized as one piece (as at inference);
    when the boundary merges (a prompt ending in a space before a word), the merged token carries
    completion text and is trained."""
    eos_id = tokenizer.token_to_id(tokenizer.eos_token) if tokenizer.eos_token else None
    if eos_id is None:
        raise _LineError(
            "the tokenizer has no chat template and no EOS token, so a completion cannot end — "
            "use a model with an EOS token or pass a --chat-template"
        )
    prompt_ids = tokenizer.encode(prompt)
    input_ids = tokenizer.encode(prompt + completion)
    if input_ids[-1:] != [eos_id]:  # unless the tokenizer's post-processor appends EOS itself
        input_ids.append(eos_id)
    start = 0
    while start < min(len(prompt_ids), len(input_ids) - 1) and prompt_ids[start] == input_ids[start]:
        start += 1
    labels = [IGNORE_INDEX] * start + input_ids[start:]
    return input_ids, labels
