"""End to end on the real SmolLM2: streaming text, and the HF-directory path against the GGUF path."""

from __future__ import annotations

import pytest
import torch

from luodi.engine.sampling import SamplingParams
from luodi.llm import LLM
from model_cache import pulled_model_path

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM.load(str(pulled_model_path(SMOLLM2)), device="cpu")


def test_streamed_chinese_answer_concatenates_to_full_decode(llm):
    ids = llm.prompt_ids("请用中文介绍一下你自己，并写一首关于月亮的短诗。")
    chunks, tokens = [], []
    for out in llm.stream(ids, SamplingParams(temperature=0, max_tokens=64)):
        chunks.append(out.new_text)
        tokens.extend(out.new_token_ids)
    # Mid-stream, bytes of a character split across tokens are held back; only the final chunk
    # of an answer cut by max_tokens may end on an incomplete character (as decode() shows it).
    assert "\ufffd" not in "".join(chunks[:-1])
    assert "".join(chunks) == llm.tokenizer.decode(tokens)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(chunks))  # the answer is Chinese


def test_stop_string_cuts_the_text(llm):
    ids = llm.prompt_ids("Count from 1 to 20, separated by commas.")
    full = llm.complete(ids, SamplingParams(temperature=0, max_tokens=60))
    assert "5" in full.text
    cut = llm.complete(ids, SamplingParams(temperature=0, max_tokens=60, stop=("5",)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index("5")]


@pytest.mark.slow
def test_sharded_hf_directory_gives_the_gguf_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    gguf_path = pulled_model_path(SMOLLM2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                           dtype=torch.float32)
    config = hf.config
    config.__dict__.pop("quantization_config", None)  # a GGUF-loaded model refuses to save itself
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(hf.state_dict())
    plain.save_pretrained(tmp_path, max_shard_size="100MB")  # several shards + index
    assert (tmp_path / "model.safetensors.index.json").exists()
    from_gguf = LLM.load(str(gguf_path), device="cpu", dtype="float32")
    from_gguf.tokenizer.save(tmp_path)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    from_dir = LLM.load(str(tmp_path), device="cpu", dtype="float32")
    assert from_dir.has_chat_template
    params = SamplingParams(temperature=0, max_tokens=24)
    for prompt in ("Name a red fruit.", "你好！"):
        ids = from_dir.prompt_ids(prompt)
        assert ids == from_gguf.prompt_ids(prompt)
        assert from_dir.complete(ids, params).token_ids == from_gguf.complete(ids, params).token_ids


def test_conversation_drops_oldest_turns_to_fit_the_window():
    from luodi.conversation import Conversation
    from luodi.engine.engine import EngineConfig
    from luodi.errors import PromptTooLongError
    from luodi.models.loader import load_model

    small = LLM(load_model(str(pulled_model_path(SMOLLM2)), device="cpu"), EngineConfig(max_model_len=160))
    chat = Conversation(small, system="Be brief.")
    params = SamplingParams(temperature=0, max_tokens=16)
    for i in range(6):
        chat.reply(f"Message {i}: tell me one fact about the number {i}, please.", params)
        prompt = small.prompt_ids(chat.messages())
        assert len(prompt) <= small.context_window
    assert chat.turns[0]["content"].startswith("Message") and not chat.turns[0]["content"].startswith("Message 0")
    assert chat.turns[-2]["content"].startswith("Message 5")
    with pytest.raises(PromptTooLongError, match="context window"):
        chat.reply("word " * 300, params)
    assert chat.turns[-2]["content"].startswith("Message 5")  # the failed turn left no trace
