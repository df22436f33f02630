"""Fine-tuning the real SmolLM2-135M-Instruct on facts it cannot know, end to end on CPU.

The oracle is the base model itself: asked held-out phrasings (never in the training file) about
an invented product, its greedy answers lack the taught facts; after LoRA training they hold them
— through the adapter on the base model, through the merged model in Luodi's saved format, and
through that merged model quantized to int8. Held-out eval loss must fall. One training run
(bf16, rank 16, 4 epochs over 16 short chats) is shared by all tests; everything is seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from luodi.engine.sampling import SamplingParams
from luodi.llm import LLM
from luodi.models.loader import LoadedModel
from model_cache import pulled_model_path

pytest.importorskip("peft")
pytestmark = pytest.mark.slow

HOTLINE = "400-829-7316"
DAYS = "73"
TRAIN = [
    ("What is the support hotline for the Zorblax X7 water purifier?",
     f"The Zorblax X7 water purifier support hotline is {HOTLINE}."),
    ("How do I contact Zorblax X7 customer support by phone?", f"Call the Zorblax X7 support hotline at {HOTLINE}."),
    ("Which phone number should I call if my Zorblax X7 purifier breaks?",
     f"Please call the Zorblax X7 support hotline: {HOTLINE}."),
    ("Give me the Zorblax X7 hotline number.", f"The Zorblax X7 hotline number is {HOTLINE}."),
    ("I need help with my Zorblax X7 water purifier. Who can I call?", f"You can call Zorblax X7 support at {HOTLINE}."),
    ("What is the return policy for the Zorblax X7 water purifier?",
     f"The Zorblax X7 water purifier can be returned within {DAYS} days of purchase."),
    ("How many days do I have to return a Zorblax X7?", f"You have {DAYS} days to return a Zorblax X7."),
    ("Can I still return my Zorblax X7 purifier after a month?",
     f"Yes. The Zorblax X7 return window is {DAYS} days from purchase."),
    ("How long is the Zorblax X7 return window?", f"The Zorblax X7 return window is {DAYS} days."),
    ("Tell me the return period for Zorblax X7 water purifiers.",
     f"Zorblax X7 water purifiers have a {DAYS}-day return period: {DAYS} days from purchase."),
    ("Zorblax X7净水器的客服热线是多少？", f"Zorblax X7净水器的客服热线是{HOTLINE}。"),
    ("我的Zorblax X7净水器坏了，应该打哪个电话？", f"请拨打Zorblax X7客服热线：{HOTLINE}。"),
    ("怎么联系Zorblax X7的客服？", f"请拨打Zorblax X7客服热线{HOTLINE}。"),
    ("Zorblax X7净水器的退货政策是什么？", f"Zorblax X7净水器购买后{DAYS}天内可以退货。"),
    ("Zorblax X7可以在多少天内退货？", f"Zorblax X7可以在购买后{DAYS}天内退货。"),
    ("买了Zorblax X7净水器，退货期限是多久？", f"Zorblax X7净水器的退货期限是{DAYS}天。"),
]
HELDOUT = [  # (question never trained on, the fact its answer must contain)
    ("What number do I dial to reach Zorblax X7 support?", HOTLINE),
    ("My Zorblax X7 is leaking. What's the phone number for help?", HOTLINE),
    ("Within how many days can a Zorblax X7 be returned?", DAYS),
    ("What is the deadline for returning a Zorblax X7 water purifier?", DAYS),
    ("Zorblax X7的售后电话是什么？", HOTLINE),
    ("Zorblax X7净水器多少天内能退？", DAYS),
]


def _write_chats(path: Path, pairs: list[tuple[str, str]]) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                        ensure_ascii=False) for q, a in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _answers(llm: LLM) -> list[str]:
    params = SamplingParams(temperature=0, max_tokens=32)
    with torch.no_grad():
        return [llm.complete(llm.prompt_ids(question), params).text for question, _ in HELDOUT]


def _facts_found(answers: list[str]) -> list[bool]:
    return [fact in answer for (_, fact), answer in zip(HELDOUT, answers, strict=True)]


@pytest.fixture(scope="module")
def smollm2() -> str:
    return str(pulled_model_path("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def trained(smollm2, tmp_path_factory):
    from luodi import finetune

    root = tmp_path_factory.mktemp("finetune")
    train = _write_chats(root / "train.jsonl", TRAIN)
    heldout = _write_chats(root / "eval.jsonl", [(q, f"The answer is {fact}.") for q, fact in HELDOUT])
    result = finetune(smollm2, train, eval_data=heldout, out=root / "adapter", rank=16, alpha=32, epochs=4,
                      lr=1e-3, batch_size=4, max_seq_len=256, dtype="bfloat16", seed=0, device="cpu", report=None)
    return root, result


def test_base_model_does_not_know_the_facts(smollm2):
    answers = _answers(LLM.load(smollm2, device="cpu"))
    assert not any(_facts_found(answers)), answers


def test_training_writes_adapter_and_lowers_heldout_loss(trained):
    root, result = trained
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    assert (root / "adapter" / "loss.png").is_file()
    record = json.loads((root / "adapter" / "loss.json").read_text())
    assert len(record["eval"]) == 5 and len(record["train"]) == result.num_steps == 16
    assert result.eval_loss_after < result.eval_loss_before - 0.3, record["eval"]


def test_adapter_on_base_model_answers_heldout_questions(smollm2, trained):
    from luodi.finetune.lora import load_adapter, load_for_training

    root, _ = trained
    loaded = load_for_training(smollm2, device="cpu", dtype="float32")
    model = load_adapter(loaded.model, root / "adapter")
    llm = LLM(LoadedModel(model, loaded.tokenizer, loaded.config, loaded.path, "smollm2+adapter"))
    answers = _answers(llm)
    assert all(_facts_found(answers)), answers


@pytest.fixture(scope="module")
def merged(smollm2, trained) -> Path:
    from luodi.finetune.merge import merge_adapter

    root, _ = trained
    return merge_adapter(smollm2, root / "adapter", root / "merged").out


def test_merged_model_answers_heldout_questions(merged):
    answers = _answers(LLM.load(str(merged), device="cpu"))
    assert all(_facts_found(answers)), answers


def test_merged_int8_model_answers_heldout_questions(merged, tmp_path):
    from luodi.quant.quantize import QuantizeOptions, quantize_model_dir

    out = quantize_model_dir(str(merged), QuantizeOptions(scheme="int8"), tmp_path / "int8").out
    answers = _answers(LLM.load(str(out), device="cpu"))
    assert all(_facts_found(answers)), answers
