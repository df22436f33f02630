"""Resuming a request another engine had started: the output continues where that engine stopped.

Oracle: the same request run uninterrupted. The resumed engine gets the prompt and the first k
output tokens (`resume_ids`, what a gateway saw before a replica died); with batch-invariant
kernels the recomputed positions' logits equal the decode steps they replace, so greedy output
after them is token for token the uninterrupted one, and the text reported is exactly the rest of
the text (a Chinese prompt splits characters across byte tokens, a stop string holds text back).
"""

from __future__ import annotations

import pytest

from luodi.engine.sampling import SamplingParams
from luodi.errors import InvalidParameterError
from luodi.llm import LLM
from model_cache import pulled_model_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("batch_invariant_kernels")]

PROMPTS = ["Tell me a short story about a cat who learns to fly.", "请介绍一下长城。",
           "List the numbers from 1 to 30, separated by commas."]


@pytest.fixture(scope="module")
def smollm2() -> LLM:
    return LLM.load(str(pulled_model_path("smollm2-135m-instruct")), device="cpu")


def _run(llm: LLM, prompt_ids: list[int], params: SamplingParams, resume: list[int] = ()) -> tuple[list[int], str, str]:
    engine = llm.engine
    request_id = engine.add_request(prompt_ids, params, resume_ids=resume)
    ids, text, reason = [], "", None
    while engine.has_unfinished:
        for out in engine.step():
            if out.request_id == request_id:
                ids.extend(out.new_token_ids)
                text += out.new_text
                reason = out.finish_reason or reason
    return ids, text, reason


def _text_after(llm: LLM, prompt_ids: list[int], params: SamplingParams, ids: list[int], k: int) -> str:
    """The text an engine had reported after its first k output tokens (the same detokenizer)."""
    from luodi.engine.detokenizer import IncrementalDetokenizer, StopChecker

    detok, stops = IncrementalDetokenizer(llm.tokenizer, prompt_ids), StopChecker(params.stop)
    return "".join(stops.push(detok.push(t)) for t in ids[:k])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_resumed_output_continues_the_uninterrupted_one(smollm2, prompt):
    params = SamplingParams(temperature=0, max_tokens=48, stop=("Great Wall of",))
    prompt_ids = smollm2.prompt_ids(prompt)
    ids, text, reason = _run(smollm2, prompt_ids, params)
    assert len(ids) > 12
    for k in (1, len(ids) // 2, len(ids) - 1):
        rest_ids, rest_text, rest_reason = _run(smollm2, prompt_ids, params, ids[:k])
        assert rest_ids == ids[k:], k
        sent = _text_after(smollm2, prompt_ids, params, ids, k)
        assert text.startswith(sent) and sent + rest_text == text, k
        assert rest_reason == reason


def test_resume_ids_are_checked(smollm2):
    prompt_ids = smollm2.prompt_ids("Say hello.")
    with pytest.raises(InvalidParameterError, match="leave nothing to generate"):
        smollm2.engine.add_request(prompt_ids, SamplingParams(max_tokens=3), resume_ids=[1, 2, 3])
    with pytest.raises(InvalidParameterError, match="resume_token_ids must lie in"):
        smollm2.engine.add_request(prompt_ids, SamplingParams(max_tokens=8), resume_ids=[-1])
