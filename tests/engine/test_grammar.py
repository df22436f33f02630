"""Constrained decoding in the engine: masks, fast-forward, outputs that match their grammar.

Oracles: llguidance's own token validation (an independent matcher fed the same tokens) for the
masks; step-by-step constrained decoding (every forced token spends its own decode step) for
fast-forward; `jsonschema` / `re` for the outputs. The engine runs the tiny random-weight Llama over
a byte-level tokenizer (token = byte, 255 = EOS), whose spread logits leave no near-ties.
"""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
import torch
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from luodi.engine.engine import EngineConfig, LLMEngine
from luodi.engine.grammar import GrammarError, GrammarSpec, allowed_tokens, new_bitmask
from luodi.engine.sampling import SamplingParams
from luodi.engine.speculative import SpeculativeConfig
from luodi.loading.gguf import GGUFFile
from luodi.loading.tokenizer import Tokenizer, _byte_to_unicode
from luodi.structured.guidance import MAX_GRAMMAR_CHARS, LLGuidanceBackend, backend_for
from tests.model_cache import pulled_model_path

EOS = 255
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}
GRAMMARS = [
    GrammarSpec("json_schema", json.dumps(PERSON)),
    GrammarSpec("regex", r"(red|green|blue)-[0-9]{2,4}"),
    GrammarSpec("choice", json.dumps(["positive", "negative", "neutral"])),
    GrammarSpec("lark", 'start: "x=" NUM ";" \nNUM: /[0-9]{1,3}/'),
]


def byte_backend() -> Backend:
    """One token per byte 0..254 and `<eos>` = 255: the tiny model's 256-token vocabulary."""
    to_unicode = _byte_to_unicode()
    backend = Backend(BPE(vocab={to_unicode[b]: b for b in range(255)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<eos>", special=True)])
    return backend


@pytest.fixture(scope="module")
def byte_tokenizer() -> Backend:
    return byte_backend()


@pytest.fixture(scope="module")
def grammars(byte_tokenizer: Backend) -> LLGuidanceBackend:
    return LLGuidanceBackend(byte_tokenizer.to_str, [EOS], 256)


def run(model, grammars, params: list[SamplingParams], **config) -> tuple[list[list[int]], int, int]:
    """Output ids per request, the number of steps taken, and the tokens fast-forwarded."""
    engine = LLMEngine(model, None, EngineConfig(**config), eos_token_ids=frozenset({EOS}),
                       grammar_backend=grammars)
    prompts = [[10 + i, 20, 30 + i] for i in range(len(params))]
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    outputs: dict[str, list[int]] = {i: [] for i in ids}
    num_steps = num_forced = 0
    while engine.has_unfinished:
        running = list(engine.scheduler.requests.values())
        outs = engine.step()
        num_steps += 1
        for out in outs:
            outputs[out.request_id].extend(out.new_token_ids)
        num_forced += sum(r.num_forced_tokens for r in running if r.is_finished)
    return [outputs[i] for i in ids], num_steps, num_forced


def text_of(backend: Backend, ids: list[int]) -> str:
    return backend.decode([t for t in ids if t != EOS])


def check_matches(spec: GrammarSpec, text: str) -> None:
    if spec.kind == "json_schema":
        jsonschema.validate(json.loads(text), json.loads(spec.text))
    elif spec.kind == "regex":
        assert re.fullmatch(spec.text, text), text
    elif spec.kind == "choice":
        assert text in json.loads(spec.text)
    else:
        assert re.fullmatch(r"x=[0-9]{1,3};", text), text


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_fast_forwarded_tokens_equal_step_by_step_decoding(tiny_model, grammars, byte_tokenizer, temperature):
    params = [SamplingParams(max_tokens=120, temperature=temperature, seed=7 + i, grammar=g)
              for i, g in enumerate(GRAMMARS)]
    fast, fast_steps, num_forced = run(tiny_model, grammars, params)
    slow, slow_steps, _ = run(tiny_model, grammars, params, enable_fast_forward=False)
    assert fast == slow
    assert num_forced > 0 and fast_steps < slow_steps
    for spec, ids in zip(GRAMMARS, fast, strict=True):
        check_matches(spec, text_of(byte_tokenizer, ids))


# Outputs of the four grammars, put in the prompts so that drafts from the prompt match them.
EXAMPLES = ['{"name":"ab","age":7,"role":"user","tags":["a","b"]}', "green-123", "negative", "x=12;"]


def _run_collecting(model, grammars, params: list[SamplingParams], prompts: list[list[int]], **config):
    """Tokens and logprobs per request, and the engine's stats."""
    engine = LLMEngine(model, None, EngineConfig(**config), eos_token_ids=frozenset({EOS}),
                       grammar_backend=grammars)
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    logprobs: dict[str, list[float]] = {i: [] for i in ids}
    while engine.has_unfinished:
        for out in engine.step():
            tokens[out.request_id].extend(out.new_token_ids)
            logprobs[out.request_id].extend(lp.logprob for lp in out.new_logprobs)
    return [tokens[i] for i in ids], [logprobs[i] for i in ids], engine.stats


@pytest.mark.parametrize("fast_forward", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_speculation_leaves_constrained_outputs_unchanged(tiny_model, grammars, byte_tokenizer, temperature,
                                                          fast_forward):
    """Drafts cut where the grammar rejects them, a mask per draft row, the matcher advanced over
    accepted tokens only: the tokens (and logprobs) of constrained decoding without speculation."""
    specs = GRAMMARS * 2
    params = [SamplingParams(max_tokens=120, temperature=temperature, seed=7 + i, grammar=g, logprobs=2)
              for i, g in enumerate(specs)]
    prompts = [list(f"Example: {EXAMPLES[i % 4]} Now: ".encode()) * (1 + i // 4) for i in range(len(specs))]
    off = SpeculativeConfig(method="none")
    plain, plain_logprobs, _ = _run_collecting(tiny_model, grammars, params, prompts, speculative=off,
                                               enable_fast_forward=fast_forward)
    spec, spec_logprobs, stats = _run_collecting(tiny_model, grammars, params, prompts,
                                                 speculative=SpeculativeConfig(adaptive=False),
                                                 enable_fast_forward=fast_forward)
    assert spec == plain
    for got, want in zip(spec_logprobs, plain_logprobs, strict=True):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)
    assert stats.num_accepted_tokens > 0
    for grammar, ids in zip(specs, spec, strict=True):
        check_matches(grammar, text_of(byte_tokenizer, ids))


def test_sampled_outputs_always_match_their_grammar(tiny_model, grammars, byte_tokenizer):
    specs = GRAMMARS * 3
    params = [SamplingParams(max_tokens=120, temperature=1.5, seed=i, grammar=g) for i, g in enumerate(specs)]
    outputs, _, _ = run(tiny_model, grammars, params, max_num_seqs=16)
    for spec, ids in zip(specs, outputs, strict=True):
        check_matches(spec, text_of(byte_tokenizer, ids))


def test_unconstrained_rows_beside_constrained_ones_are_unchanged(tiny_model, grammars):
    plain = SamplingParams(max_tokens=12, temperature=0.0)
    alone, _, _ = run(tiny_model, grammars, [plain])
    mixed, _, _ = run(tiny_model, grammars, [plain, SamplingParams(max_tokens=12, temperature=0.0, grammar=GRAMMARS[1])])
    assert mixed[0] == alone[0]


def test_logprobs_are_reported_after_the_mask(tiny_model, grammars):
    engine = LLMEngine(tiny_model, None, EngineConfig(), eos_token_ids=frozenset({EOS}), grammar_backend=grammars)
    spec = GRAMMARS[1]
    engine.add_request([1, 2, 3], SamplingParams(max_tokens=20, temperature=0.0, logprobs=5, grammar=spec))
    oracle = grammars.matcher(spec)
    while engine.has_unfinished:
        for out in engine.step():
            assert len(out.new_logprobs) == len(out.new_token_ids)
            for token, lp in zip(out.new_token_ids, out.new_logprobs, strict=True):
                mask = new_bitmask(1, 256)
                oracle.fill_mask(mask[0])
                allowed = allowed_tokens(mask[0], 256)
                assert all(allowed[t] for t, _ in lp.top)  # every alternative was allowed
                assert lp.logprob <= 0.0 and lp.token_id == token
                assert oracle.accept([token])


def test_masks_agree_with_llguidance_token_validation_on_random_walks():
    llguidance = pytest.importorskip("llguidance")
    path = pulled_model_path("smollm2-135m-instruct")
    gguf = next(path.glob("*.gguf")) if path.is_dir() else path
    tokenizer = Tokenizer.from_gguf(GGUFFile(gguf))
    vocab = tokenizer.vocab_size
    eos = sorted(tokenizer.eos_token_ids)
    backend = backend_for(tokenizer, vocab, eos)
    oracle_tokenizer = llguidance.LLTokenizer(tokenizer.backend.to_str(), eos_token=eos)
    rng = random.Random(0)
    for spec in GRAMMARS:
        from luodi.structured.guidance import to_llguidance_grammar

        matcher = backend.matcher(spec)
        oracle = llguidance.LLMatcher(oracle_tokenizer, to_llguidance_grammar(spec), log_level=0)
        for _ in range(15):
            mask = new_bitmask(1, vocab)
            matcher.fill_mask(mask[0])
            allowed = allowed_tokens(mask[0], vocab)
            allowed_ids = allowed.nonzero().flatten().tolist()
            probe = set(rng.sample(range(vocab), 300)) | set(rng.sample(allowed_ids, min(50, len(allowed_ids))))
            forced = oracle.compute_ff_tokens()
            for token in eos:  # end-of-sequence: allowed exactly where the text so far is complete
                assert bool(allowed[token]) == oracle.is_accepting(), (spec.kind, token)
            for token in (probe | set(forced)) - set(eos):
                is_valid = oracle.validate_tokens([token]) == 1
                if forced:  # a forced stretch: the mask keeps to llguidance's own tokenization of it
                    assert is_valid or not allowed[token], (spec.kind, token)
                else:
                    assert bool(allowed[token]) == is_valid, (spec.kind, token)
            assert not forced or allowed[forced[0]]
            choice = rng.choice(allowed_ids)
            if choice in eos:
                break
            assert matcher.accept([choice]) and oracle.consume_token(choice)


@pytest.mark.parametrize(("spec", "message"), [
    (GrammarSpec("json_schema", '{"type": "frobnicate"}'), "frobnicate"),
    (GrammarSpec("json_schema", '{"type": "object", "dependentSchemas": {"a": {}}}'), "dependentSchemas"),
    (GrammarSpec("json_schema", "{not json"), "not valid JSON"),
    (GrammarSpec("regex", "a(b"), "unclosed group"),
    (GrammarSpec("lark", "start: undefined_rule"), "undefined_rule"),
    (GrammarSpec("choice", "[]"), "non-empty list"),
    (GrammarSpec("regex", "a" * (MAX_GRAMMAR_CHARS + 1)), "at most"),
])
def test_bad_grammars_are_refused_naming_the_problem(grammars, spec, message):
    with pytest.raises(GrammarError, match=re.escape(message)) as info:
        grammars.matcher(spec)
    assert info.value.param == "response_format"


def test_a_grammar_that_compiles_too_slowly_is_refused(byte_tokenizer):
    slow = LLGuidanceBackend(byte_tokenizer.to_str, [EOS], 256, compile_timeout_s=0.0)
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "string", "pattern": f"^[a-z]{{{i}}}@x$"}
                                               for i in range(1, 200)}}
    with pytest.raises(GrammarError, match="did not compile within"):
        slow.matcher(GrammarSpec("json_schema", json.dumps(schema)))


def test_engine_refuses_a_grammar_before_admitting_the_request(tiny_model, grammars):
    engine = LLMEngine(tiny_model, None, EngineConfig(), eos_token_ids=frozenset({EOS}), grammar_backend=grammars)
    params = SamplingParams(max_tokens=5, grammar=GrammarSpec("regex", "a(b", param="structured_outputs"))
    with pytest.raises(GrammarError) as info:
        engine.add_request([1, 2], params)
    assert info.value.param == "structured_outputs" and not engine.has_unfinished
    without_backend = LLMEngine(tiny_model, None, EngineConfig(), eos_token_ids=frozenset({EOS}))
    with pytest.raises(GrammarError, match="no grammar backend"):
        without_backend.check_request([1, 2], SamplingParams(grammar=GRAMMARS[1]))


def test_min_tokens_gives_way_to_a_finished_grammar(tiny_model, grammars, byte_tokenizer):
    params = SamplingParams(max_tokens=30, min_tokens=20, temperature=0.0, grammar=GRAMMARS[2])
    (ids,), _, _ = run(tiny_model, grammars, [params])
    check_matches(GRAMMARS[2], text_of(byte_tokenizer, ids))
    assert torch.tensor(ids).max() < 255
