"""Speculative decoding on the bundled models: the tokens of plain decoding, token for token.

Oracle: the same engine with speculation off. In batch-invariant mode a position's logits do not
depend on how many rows its forward pass holds, so a draft's verification rows equal the decode
steps they replace bit for bit, and greedy and seeded outputs must be identical — alone, in
batches of up to four (all drafting), and under a small token budget that chunks prompts beside
the drafts. The prompts are English and Chinese, many of them copy tasks (repeat, extract,
summarize a text given in full) so that drafts are accepted, some free generation.
"""

from __future__ import annotations

import pytest

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.sampling import SamplingParams
from luodi.engine.speculative import SpeculativeConfig
from luodi.llm import LLM
from model_cache import pulled_model_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("batch_invariant_kernels")]

NOTICE = ("The office will be closed on Friday, 12 May, for maintenance of the heating system. "
          "Staff should work from home and keep their phones on. Deliveries will be accepted on Monday.")
CHINESE_NOTICE = "本周五（5月12日）办公室因供暖系统维修关闭。员工请在家办公，并保持电话畅通。快递将于周一签收。"
PROMPTS = [
    f"Repeat the following text exactly: {NOTICE}",
    f"Summarize in one sentence: {NOTICE}",
    f"Extract every date from this text, one per line: {NOTICE}",
    f"Copy this notice and then translate it to French: {NOTICE}",
    f"请把下面这段话原样重复一遍：{CHINESE_NOTICE}",
    f"请用一句话总结：{CHINESE_NOTICE}",
    f"从下面的通知中找出所有日期：{CHINESE_NOTICE}",
    "List the numbers from 1 to 30, separated by commas.",
    "Write the word 'banana' ten times, separated by spaces.",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n# Write mul and div in the same style.",
    "Fix the typo and repeat the sentence: The quick brown fox jumpd over the lazy dog.",
    "Names: Alice Smith, Bob Jones, Carol White, Dan Brown. Write them as a JSON list of strings.",
    "Convert to a Markdown table with columns name and age: Alice 31, Bob 25, Carol 47, Dan 19.",
    "What is the capital of France?",
    "Tell me a short story about a cat who learns to fly.",
    "请介绍一下长城。",
    "写一首关于春天的短诗。",
    "Explain photosynthesis to a child.",
    "Q: What is 12 times 12? A: 144. Q: What is 11 times 11? A:",
    "Say hello.",
    "The meeting notes: budget approved; hiring paused; launch moved to June. Repeat the notes as a bullet list.",
    "Continue the pattern: red, green, blue, red, green, blue, red,",
]
CONFIGS = {
    "alone": dict(max_num_seqs=1),
    "batch4": dict(max_num_seqs=4),
    "chunked": dict(max_num_seqs=4, max_num_batched_tokens=24),
}
OFF = SpeculativeConfig(method="none")
ALWAYS = SpeculativeConfig(adaptive=False)  # every proposal verified, whatever the policy would choose


@pytest.fixture(scope="module")
def smollm2() -> LLM:
    return LLM.load(str(pulled_model_path("smollm2-135m-instruct")), device="cpu")


@pytest.fixture(scope="module")
def gemma3() -> LLM:
    return LLM.load(str(pulled_model_path("gemma3-270m")), device="cpu")


def _engine(llm: LLM, speculative: SpeculativeConfig, **config) -> LLMEngine:
    return LLMEngine(llm.loaded.model, llm.tokenizer, EngineConfig(speculative=speculative, **config),
                     eos_token_ids=llm.engine.eos_token_ids)


def _compare(llm: LLM, prompts: list[str], params: SamplingParams, **config) -> LLMEngine:
    """Run `prompts` with speculation off and on; the outputs must be equal. Returns the on engine."""
    ids = [llm.prompt_ids(p) for p in prompts]
    plain = _engine(llm, OFF, **config).generate(ids, params)
    engine = _engine(llm, ALWAYS, **config)
    spec = engine.generate(ids, params)
    for prompt, want, got in zip(prompts, plain, spec, strict=True):
        assert got == want, f"{prompt!r}:\n plain {llm.tokenizer.decode(want)!r}\n spec  {llm.tokenizer.decode(got)!r}"
    return engine


# A copy task, a Chinese one, a pattern, code and free generation: enough for the one-at-a-time path.
FEW = [PROMPTS[i] for i in (0, 3, 4, 7, 9, 14, 15, 21)]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_smollm2_greedy_equals_plain_decoding(smollm2, config):
    prompts = FEW if config == "alone" else PROMPTS
    engine = _compare(smollm2, prompts, SamplingParams(temperature=0, max_tokens=40), **CONFIGS[config])
    assert engine.stats.num_accepted_tokens > 0


def test_smollm2_seeded_sampling_equals_plain_decoding(smollm2):
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=1234, max_tokens=40, repetition_penalty=1.05)
    engine = _compare(smollm2, FEW, params, max_num_seqs=4)
    assert engine.stats.num_accepted_tokens > 0


@pytest.mark.parametrize("config", ["alone", "chunked"])
def test_gemma3_greedy_equals_plain_decoding(gemma3, config):
    engine = _compare(gemma3, FEW, SamplingParams(temperature=0, max_tokens=32), **CONFIGS[config])
    assert engine.stats.num_accepted_tokens > 0


def test_stop_strings_cut_at_the_same_token(smollm2):
    """A stop string completed inside an accepted draft ends the output at that token, as without drafts."""
    prompt = smollm2.prompt_ids(f"Repeat the following text exactly: {NOTICE}")
    results = []
    for speculative in (OFF, ALWAYS):
        engine = _engine(smollm2, speculative)
        request_id = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=60, stop=["phones"]))
        tokens, text, reason = [], "", None
        while engine.has_unfinished:
            for out in engine.step():
                assert out.request_id == request_id
                tokens.extend(out.new_token_ids)
                text += out.new_text
                reason = out.finish_reason
        results.append((tokens, text, reason, engine.stats.num_accepted_tokens))
    (plain_tokens, plain_text, plain_reason, _), (tokens, text, reason, num_accepted) = results
    assert "phones" not in text and "keep their" in text  # it stopped inside the copied notice
    assert (tokens, text, reason) == (plain_tokens, plain_text, plain_reason) and reason == "stop"
    assert num_accepted > 0
