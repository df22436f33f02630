"""LoRA adapters served unmerged, through the OpenAI API: `model: "smollm2:NAME"` picks the adapter.

Oracle: the adapter merged into the base (`merge_adapter`, peft's merge) and run on its own
engine; the server's answer for "smollm2:NAME" must decode to the merged model's greedy tokens,
while "smollm2" still answers as the base.
"""

from __future__ import annotations

import openai
import pytest
import torch
from live_server import MODEL_ID, SMOLLM2, make_llm, running_server, service_for
from model_cache import pulled_model_path

from luodi.engine.sampling import SamplingParams
from luodi.models.adapters import attach_adapters, read_adapter
from luodi.models.loader import load_model

pytest.importorskip("peft")

QUESTION = [{"role": "user", "content": "Name a color."}]
MAX_TOKENS = 12


def _make_adapter(out):
    from luodi.finetune.lora import LoraOptions, attach_lora, load_for_training, save_adapter

    torch.manual_seed(0)
    model = load_for_training(str(pulled_model_path(SMOLLM2)), device="cpu", dtype="float32").model
    options = LoraOptions(rank=4, alpha=8, target_modules=("q_proj", "v_proj", "gate_proj", "down_proj"))
    peft_model = attach_lora(model, options)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return save_adapter(peft_model, out, SMOLLM2)


@pytest.fixture(scope="module")
def env(loaded, tmp_path_factory):
    from luodi.finetune.merge import merge_adapter

    root = tmp_path_factory.mktemp("lora-api")
    adapter = _make_adapter(root / "adapter")
    merged = merge_adapter(str(pulled_model_path(SMOLLM2)), adapter, root / "merged", dtype="float32").out
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    oracle = make_llm(load_model(str(merged), dtype="float32"))
    prompt = oracle.prompt_ids(QUESTION)
    want = oracle.tokenizer.decode(oracle.engine.generate([prompt], greedy)[0])
    served = load_model(str(pulled_model_path(SMOLLM2)), dtype="float32")
    attach_adapters(served.model, [read_adapter("tuned", adapter)])
    llm = make_llm(served)
    base = oracle.tokenizer.decode(make_llm(loaded).engine.generate([prompt], greedy)[0])
    with running_server(service_for(llm)) as base_url:
        yield openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0), want, base


def _ask(client: openai.OpenAI, model: str) -> str:
    answer = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0)
    return answer.choices[0].message.content


def test_models_lists_the_adapter(env):
    client, _, _ = env
    assert [m.id for m in client.models.list().data] == [MODEL_ID, f"{MODEL_ID}:tuned"]
    assert client.models.retrieve(f"{MODEL_ID}:tuned").id == f"{MODEL_ID}:tuned"


def test_adapter_answers_as_the_merged_model(env):
    client, want, base = env
    assert want != base  # the adapter changes the answer, so the check below means something
    assert _ask(client, f"{MODEL_ID}:tuned") == want
    assert _ask(client, MODEL_ID) == base


def test_unknown_adapter_is_404(env):
    client, _, _ = env
    with pytest.raises(openai.NotFoundError) as info:
        _ask(client, f"{MODEL_ID}:nope")
    assert info.value.body["code"] == "model_not_found"
    assert "smollm2:tuned" in info.value.body["message"]
