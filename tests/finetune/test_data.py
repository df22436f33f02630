"""Fine-tuning data tests: JSONL parsing, validation messages, and loss masks.

Oracles: the real SmolLM2 tokenizer. `input_ids` must equal `Tokenizer.encode_chat` of the
conversation, and the trained tokens, decoded run by run, must read exactly as each assistant
reply plus SmolLM2's end-of-turn token `<|im_end|>` (its template writes `\\n` after that token,
outside the trained span). Each error names FILE:LINE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_cache import pulled_model_path

from luodi.errors import InvalidParameterError, LuodiError
from luodi.finetune.data import (
    IGNORE_INDEX,
    MAX_REPORTED_ERRORS,
    DataError,
    TrainingExample,
    load_dataset,
)
from luodi.loading.tokenizer import Tokenizer
from luodi.models.loader import load_tokenizer

END = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(pulled_model_path("smollm2-135m-instruct"))


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # relative file names, so sources read "train.jsonl:N"
    return tmp_path


def write_jsonl(rows: list[object], name: str = "train.jsonl") -> str:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    Path(name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def trained_runs(example: TrainingExample, tokenizer: Tokenizer) -> list[str]:
    """Each maximal run of trained tokens, decoded with special tokens shown."""
    runs: list[list[int]] = []
    previous_trained = False
    for token, label in zip(example.input_ids, example.labels, strict=True):
        is_trained = label != IGNORE_INDEX
        if is_trained:
            assert label == token
            if not previous_trained:
                runs.append([])
            runs[-1].append(token)
        previous_trained = is_trained
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def chat(*turns: tuple[str, str]) -> dict[str, object]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def load_one(tokenizer: Tokenizer, row: object, max_seq_len: int = 512) -> TrainingExample:
    [example] = load_dataset(write_jsonl([row]), tokenizer, max_seq_len=max_seq_len)
    return example


# -- masks -----------------------------------------------------------------------------------------


def test_single_turn_trains_reply_and_end_of_turn(tokenizer: Tokenizer, workdir: Path) -> None:
    row = chat(("user", "Hi"), ("assistant", "Hello! How can I help?"))
    example = load_one(tokenizer, row)
    assert example.input_ids == tokenizer.encode_chat(row["messages"], add_generation_prompt=False)
    assert len(example.labels) == len(example.input_ids)
    assert trained_runs(example, tokenizer) == ["Hello! How can I help?" + END]
    assert example.source == "train.jsonl:1"
    # The last token is the template's "\n" after <|im_end|>: an input, never a target.
    assert tokenizer.decode(example.input_ids[-2:], skip_special_tokens=False) == END + "\n"
    assert example.labels[-1] == IGNORE_INDEX


def test_multi_turn_trains_every_assistant_turn(tokenizer: Tokenizer, workdir: Path) -> None:
    row = chat(
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "What is 2+2?"),
        ("assistant", "2+2 is 4."),
        ("user", "And 3+3?"),
        ("assistant", "6"),
    )
    example = load_one(tokenizer, row)
    assert example.input_ids == tokenizer.encode_chat(row["messages"], add_generation_prompt=False)
    assert trained_runs(example, tokenizer) == ["Hello!" + END, "2+2 is 4." + END, "6" + END]


def test_system_and_developer_prompts_are_not_trained(tokenizer: Tokenizer, workdir: Path) -> None:
    system = chat(("system", "You answer tersely."), ("user", "Capital of France?"), ("assistant", "Paris."))
    developer = chat(
        ("developer", "You answer tersely."), ("user", "Capital of France?"), ("assistant", "Paris.")
    )
    first, second = load_dataset(write_jsonl([system, developer]), tokenizer, max_seq_len=512)
    assert first.input_ids == tokenizer.encode_chat(system["messages"], add_generation_prompt=False)
    assert second.input_ids == first.input_ids  # developer is the system role
    assert second.labels == first.labels
    assert trained_runs(first, tokenizer) == ["Paris." + END]
    assert "You answer tersely." in tokenizer.decode(first.input_ids)
    assert (first.source, second.source) == ("train.jsonl:1", "train.jsonl:2")


def test_chinese_content(tokenizer: Tokenizer, workdir: Path) -> None:
    row = chat(
        ("system", "你是一个乐于助人的助手。"),
        ("user", "北京是哪个国家的首都？"),
        ("assistant", "北京是中国的首都。"),
        ("user", "上海呢？"),
        ("assistant", "上海是中国最大的城市，不是首都。"),
    )
    example = load_one(tokenizer, row)
    assert example.input_ids == tokenizer.encode_chat(row["messages"], add_generation_prompt=False)
    assert trained_runs(example, tokenizer) == [
        "北京是中国的首都。" + END,
        "上海是中国最大的城市，不是首都。" + END,
    ]


def test_prompt_completion_becomes_one_chat_exchange(tokenizer: Tokenizer, workdir: Path) -> None:
    example = load_one(tokenizer, {"prompt": "Translate to French: cat", "completion": "chat"})
    messages = [
        {"role": "user", "content": "Translate to French: cat"},
        {"role": "assistant", "content": "chat"},
    ]
    assert example.input_ids == tokenizer.encode_chat(messages, add_generation_prompt=False)
    assert trained_runs(example, tokenizer) == ["chat" + END]


def test_weight_zero_turn_is_not_trained(tokenizer: Tokenizer, workdir: Path) -> None:
    row = chat(("user", "Hi"), ("assistant", "Bad reply"), ("user", "Again"), ("assistant", "Good reply"))
    row["messages"][1]["weight"] = 0
    example = load_one(tokenizer, row)
    assert trained_runs(example, tokenizer) == ["Good reply" + END]


def test_reply_with_surrounding_whitespace_and_newlines(tokenizer: Tokenizer, workdir: Path) -> None:
    reply = " Line one.\n\nLine two:\n  - item\n"
    example = load_one(tokenizer, chat(("user", "List?"), ("assistant", reply)))
    assert trained_runs(example, tokenizer) == [reply + END]


def test_plain_prompt_completion_without_chat_template(tokenizer: Tokenizer, workdir: Path) -> None:
    plain = tokenizer.with_chat_template(None)
    rows = [
        {"prompt": "Question: capital of France?\nAnswer:", "completion": " Paris"},
        {"prompt": "中文：你好\n英文：", "completion": "Hello"},
    ]
    first, second = load_dataset(write_jsonl(rows), plain, max_seq_len=512)
    eos = plain.token_to_id(plain.eos_token)
    for example, row in ((first, rows[0]), (second, rows[1])):
        assert example.input_ids == plain.encode(row["prompt"] + row["completion"]) + [eos]
        assert example.input_ids[-1] == eos
        assert trained_runs(example, plain) == [row["completion"] + END]
        num_prompt = len(plain.encode(row["prompt"]))
        assert example.labels[:num_prompt] == [IGNORE_INDEX] * num_prompt


def test_plain_prompt_ending_in_space_trains_the_merged_boundary_token(
    tokenizer: Tokenizer, workdir: Path
) -> None:
    # "Answer: " + "Paris" tokenizes as ... ":" " Paris": the merged token carries the completion.
    plain = tokenizer.with_chat_template(None)
    example = load_one(plain, {"prompt": "Answer: ", "completion": "Paris"})
    assert trained_runs(example, plain) == [" Paris" + END]
    assert plain.decode(example.input_ids, skip_special_tokens=False) == "Answer: Paris" + END


def test_blank_lines_are_skipped_and_lines_numbered_from_one(tokenizer: Tokenizer, workdir: Path) -> None:
    row = chat(("user", "Hi"), ("assistant", "Hello"))
    path = write_jsonl(["", json.dumps(row), "   ", "\t", json.dumps(row), ""])
    examples = load_dataset(path, tokenizer, max_seq_len=512)
    assert [e.source for e in examples] == ["train.jsonl:2", "train.jsonl:5"]


def test_utf8_bom_is_ignored_and_path_objects_work(tokenizer: Tokenizer, workdir: Path) -> None:
    row = chat(("user", "Hi"), ("assistant", "Hello"))
    Path("bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    [example] = load_dataset(Path("bom.jsonl"), tokenizer, max_seq_len=512)
    assert example.source == "bom.jsonl:1"
    assert trained_runs(example, tokenizer) == ["Hello" + END]


def test_example_of_exactly_max_seq_len_is_kept(tokenizer: Tokenizer, workdir: Path) -> None:
    row = chat(("user", "Hi"), ("assistant", "Hello"))
    num_tokens = len(tokenizer.encode_chat(row["messages"], add_generation_prompt=False))
    assert len(load_one(tokenizer, row, max_seq_len=num_tokens).input_ids) == num_tokens


def test_example_is_frozen(tokenizer: Tokenizer, workdir: Path) -> None:
    example = load_one(tokenizer, chat(("user", "Hi"), ("assistant", "Hello")))
    with pytest.raises(AttributeError):
        example.source = "other"  # type: ignore[misc]


# -- errors ----------------------------------------------------------------------------------------

GOOD = chat(("user", "Hi"), ("assistant", "Hello"))

BAD_LINES = {
    "bad json": ('{"messages": [}', "not valid JSON (Expecting value at column 15)"),
    "truncated json": (
        '{"prompt": "a", "completion": "b"',
        "not valid JSON (Expecting ',' delimiter at column 34)",
    ),
    "json array": ("[1, 2]", "the line is neither chat nor prompt/completion format"),
    "json string": ('"hello"', "the line is neither chat nor prompt/completion format"),
    "other keys": ({"text": "hello"}, "the line is neither chat nor prompt/completion format"),
    "both formats": ({"messages": [], "prompt": "a"}, 'has both "messages" and "prompt"/"completion"'),
    "messages not list": ({"messages": "hi"}, '"messages" must be a non-empty list'),
    "messages empty": ({"messages": []}, '"messages" must be a non-empty list'),
    "message not object": ({"messages": ["hi"]}, "message 1 is not an object"),
    "unknown role": (
        chat(("user", "Hi"), ("bot", "Hello")),
        "message 2 has unknown role 'bot' — use one of 'system', 'developer', 'user', 'assistant'",
    ),
    "missing role": ({"messages": [{"content": "Hi"}]}, "message 1 has unknown role None"),
    "null content": (
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]},
        "message 1 (user) has no string content (got NoneType)",
    ),
    "list content": (
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text"}]},
            ]
        },
        "message 2 (assistant) has no string content (got list)",
    ),
    "missing content": ({"messages": [{"role": "user"}]}, "message 1 (user) has no string content"),
    "empty assistant": (chat(("user", "Hi"), ("assistant", "  \n")), "message 2 is an empty assistant turn"),
    "no assistant": (chat(("system", "Be brief."), ("user", "Hi")), "the conversation has no assistant turn"),
    "trailing user": (
        chat(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")),
        "the conversation ends with a user turn (message 3)",
    ),
    "bad weight": (
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "x", "weight": 0.5},
            ]
        },
        'message 2 has "weight": 0.5 — use 0 (not trained) or 1 (trained)',
    ),
    "all weights zero": (
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x", "weight": 0}]},
        'every assistant turn has "weight": 0',
    ),
    "prompt not string": ({"prompt": 3, "completion": "x"}, '"prompt" must be a string (got int)'),
    "completion missing": ({"prompt": "x"}, '"completion" must be a string (got nothing)'),
    "completion empty": ({"prompt": "x", "completion": " "}, '"completion" is empty'),
}


@pytest.mark.parametrize("name", BAD_LINES)
def test_bad_line_is_named_by_file_and_line(tokenizer: Tokenizer, workdir: Path, name: str) -> None:
    bad, problem = BAD_LINES[name]
    path = write_jsonl([GOOD, "", bad, GOOD])
    with pytest.raises(DataError) as info:
        load_dataset(path, tokenizer, max_seq_len=512)
    message = str(info.value)
    assert message.startswith(f"train.jsonl:3: {problem}"), message
    assert " — " in message and "\n" not in message
    assert info.value.problems == (message,)
    assert isinstance(info.value, LuodiError)


def test_too_long_says_token_count_and_limit(tokenizer: Tokenizer, workdir: Path) -> None:
    row = chat(("user", "Tell me a story."), ("assistant", "Once upon a time " * 20))
    num_tokens = len(tokenizer.encode_chat(row["messages"], add_generation_prompt=False))
    with pytest.raises(DataError) as info:
        load_dataset(write_jsonl([GOOD, row]), tokenizer, max_seq_len=num_tokens - 1)
    assert str(info.value) == (
        f"train.jsonl:2: the example is {num_tokens} tokens, longer than --max-seq-len {num_tokens - 1} — "
        "shorten or split it, or raise --max-seq-len (examples are never truncated)"
    )


def test_not_utf8_line(tokenizer: Tokenizer, workdir: Path) -> None:
    Path("train.jsonl").write_bytes(
        json.dumps(GOOD).encode() + b"\n" + '{"prompt": "é"}'.encode("latin-1") + b"\n"
    )
    with pytest.raises(
        DataError, match=r"^train\.jsonl:2: the line is not UTF-8 text — save the file as UTF-8$"
    ):
        load_dataset("train.jsonl", tokenizer, max_seq_len=512)


def test_missing_file(tokenizer: Tokenizer, workdir: Path) -> None:
    with pytest.raises(
        DataError, match=r"^nope\.jsonl: no such file — give the path of a JSONL training file$"
    ):
        load_dataset("nope.jsonl", tokenizer, max_seq_len=512)
    Path("adir").mkdir()
    with pytest.raises(DataError, match=r"^adir: no such file"):
        load_dataset("adir", tokenizer, max_seq_len=512)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tokenizer: Tokenizer, workdir: Path, content: bytes) -> None:
    Path("train.jsonl").write_bytes(content)
    with pytest.raises(
        DataError, match=r"^train\.jsonl: the file has no examples \(it is empty or only blank lines\)"
    ):
        load_dataset("train.jsonl", tokenizer, max_seq_len=512)


def test_errors_are_collected_up_to_a_limit(tokenizer: Tokenizer, workdir: Path) -> None:
    rows: list[object] = [GOOD, "{oops", chat(("user", "Hi"))] + ["[]"] * 10 + [GOOD]
    with pytest.raises(DataError) as info:
        load_dataset(write_jsonl(rows), tokenizer, max_seq_len=512)
    lines = str(info.value).splitlines()
    assert lines[0] == "train.jsonl: 12 bad lines; fix them all and rerun:"
    assert lines[1].startswith("train.jsonl:2: not valid JSON")
    assert lines[2].startswith("train.jsonl:3: the conversation has no assistant turn")
    assert [line.split(":")[1] for line in lines[1:-1]] == [str(n) for n in range(2, 12)]
    assert lines[-1] == "... and 2 more"
    assert len(info.value.problems) == MAX_REPORTED_ERRORS
    assert info.value.problems == tuple(lines[1:-1])


def test_template_that_rewrites_earlier_turns_is_rejected(tokenizer: Tokenizer, workdir: Path) -> None:
    # Marks the final message, so a prefix of the conversation renders differently from the whole.
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if loop.last %}[final] {% endif %}"
        "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    rewriting = tokenizer.with_chat_template(template)
    row = chat(("user", "Hi"), ("assistant", "Hello"), ("user", "Again"), ("assistant", "Hi again"))
    with pytest.raises(
        DataError,
        match=r"^train\.jsonl:1: the chat template renders message 1 plus the generation "
        r"prompt as text "
        r"that is not a prefix of the whole conversation",
    ):
        load_dataset(write_jsonl([row]), rewriting, max_seq_len=512)


def test_reply_whose_leading_whitespace_merges_with_the_header_is_rejected(
    tokenizer: Tokenizer, workdir: Path
) -> None:
    # "assistant\n" + "\n\nHi": the newlines tokenize together, so no token boundary separates them.
    row = chat(("user", "Hi"), ("assistant", "\n\nHello"))
    with pytest.raises(
        DataError,
        match=r"^train\.jsonl:1: the tokens of message 1 plus the generation "
        r"prompt are not a prefix of the whole conversation's tokens",
    ):
        load_dataset(write_jsonl([row]), tokenizer, max_seq_len=512)


def test_template_that_raises_is_reported_per_line(tokenizer: Tokenizer, workdir: Path) -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    strict = tokenizer.with_chat_template(template)
    rows = [GOOD, chat(("system", "S"), ("user", "Hi"), ("assistant", "Hello"))]
    with pytest.raises(
        DataError,
        match=r"^train\.jsonl:2: the model's chat template rejected the messages: "
        r"no system role — fix the conversation or pass a different --chat-template$",
    ):
        load_dataset(write_jsonl(rows), strict, max_seq_len=512)


@pytest.mark.parametrize("max_seq_len", [0, -1, 1.5, True])
def test_invalid_max_seq_len(tokenizer: Tokenizer, workdir: Path, max_seq_len: object) -> None:
    with pytest.raises(InvalidParameterError, match="max_seq_len must be a positive integer"):
        load_dataset(write_jsonl([GOOD]), tokenizer, max_seq_len=max_seq_len)  # type: ignore[arg-type]
