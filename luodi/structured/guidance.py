"""The llguidance grammar backend: JSON Schema, regex, choice and Lark grammars as token masks.

Owns: turning a `GrammarSpec` into an llguidance grammar, compiling it once per (kind, text) with
a time limit into an LRU cache of pristine matchers (each request gets a deep copy, ~µs), the
size limits, and the `GrammarMatcher` adapter over `llguidance.LLMatcher`. The llguidance
tokenizer is built from the model tokenizer's `tokenizers` JSON on first use (it costs ~1 s for a
49k vocabulary, ~8 s for Gemma's 262k), never at model load.

Must not know: requests, the scheduler, HTTP. Errors are `GrammarError` naming the problem.

JSON is compiled without flexible whitespace (`{"a":1,"b":[2]}`): a small model given the freedom
writes whitespace forever, and compact output costs fewer tokens. Schema keywords llguidance does
not implement are errors, not silently ignored (its `lenient` option stays off).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

from luodi.engine.grammar import GrammarError, GrammarSpec

MAX_GRAMMAR_CHARS = 100_000  # a schema / grammar text longer than this is refused before compiling
COMPILE_TIMEOUT_S = 10.0
CACHE_SIZE = 128
_JSON_OPTIONS = {"whitespace_flexible": False}
_INSTALL_HINT = "structured output needs llguidance: pip install 'luodi[structured]'"


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise GrammarError(_INSTALL_HINT) from exc
    return llguidance


class LLGuidanceMatcher:
    """`GrammarMatcher` over one `llguidance.LLMatcher`."""

    __slots__ = ("_m",)

    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def fill_mask(self, bitmask_row: torch.Tensor) -> None:
        self._m.unsafe_compute_mask_ptr(bitmask_row.data_ptr(), bitmask_row.numel() * bitmask_row.element_size())

    def accept(self, token_ids: Sequence[int]) -> bool:
        return bool(self._m.consume_tokens(list(token_ids)))

    def forced_tokens(self) -> list[int]:
        return list(self._m.compute_ff_tokens())

    def is_finished(self) -> bool:
        return bool(self._m.is_stopped())

    def is_accepting(self) -> bool:
        return bool(self._m.is_accepting())

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(num_tokens)

    def num_valid(self, token_ids: Sequence[int]) -> int:
        return int(self._m.validate_tokens(list(token_ids)))

    @property
    def error(self) -> str:
        return str(self._m.get_error())


class LLGuidanceBackend:
    """`GrammarBackend` for one tokenizer. Thread-safe; compiled grammars are shared by copy."""

    def __init__(self, tokenizer_json: Callable[[], str], eos_token_ids: Sequence[int], vocab_size: int, *,
                 compile_timeout_s: float = COMPILE_TIMEOUT_S, cache_size: int = CACHE_SIZE) -> None:
        self._tokenizer_json = tokenizer_json
        self._eos_token_ids = sorted(eos_token_ids)
        self._vocab_size = vocab_size
        self.compile_timeout_s = compile_timeout_s
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-compile")

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def tokenizer(self) -> Any:
        """The `llguidance.LLTokenizer`, built on first use."""
        with self._lock:
            if self._tokenizer is None:
                llg = _llguidance()
                self._tokenizer = llg.LLTokenizer(self._tokenizer_json(), n_vocab=self._vocab_size,
                                                  eos_token=self._eos_token_ids)
            return self._tokenizer

    def matcher(self, spec: GrammarSpec) -> LLGuidanceMatcher:
        key = (spec.kind, spec.text)
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
        if template is None:
            template = self._compile(spec)
            with self._lock:
                self._cache[key] = template
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return LLGuidanceMatcher(template.deep_copy())

    def _compile(self, spec: GrammarSpec) -> Any:
        if len(spec.text) > MAX_GRAMMAR_CHARS:
            raise GrammarError(
                f"the {spec.kind} grammar is {len(spec.text)} characters; at most {MAX_GRAMMAR_CHARS} are "
                "allowed: simplify it", param=spec.param)
        grammar = to_llguidance_grammar(spec)
        tokenizer = self.tokenizer
        llg = _llguidance()
        future = self._pool.submit(llg.LLMatcher, tokenizer, grammar, log_level=0)
        try:
            matcher = future.result(timeout=self.compile_timeout_s)
        except FutureTimeout:
            # The compile thread cannot be killed; it finishes in the background and is dropped.
            raise GrammarError(
                f"the {spec.kind} grammar did not compile within {self.compile_timeout_s:g} s; simplify it",
                param=spec.param) from None
        if matcher.is_error():
            raise GrammarError(f"the {spec.kind} grammar is invalid: {_first_lines(matcher.get_error())}",
                               param=spec.param)
        return matcher


def to_llguidance_grammar(spec: GrammarSpec) -> str:
    """The llguidance grammar (JSON text) for a spec; `GrammarError` when the spec is not well-formed."""
    llg = _llguidance()
    if spec.kind == "json_object":
        return llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
    if spec.kind == "json_schema":
        schema = _json(spec)
        if not isinstance(schema, dict | bool):
            raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}", param=spec.param)
        return llg.LLMatcher.grammar_from_json_schema(bounded_numbers(schema), defaults=_JSON_OPTIONS)
    if spec.kind == "regex":
        return llg.LLMatcher.grammar_from_regex(spec.text)
    if spec.kind == "choice":
        return llg.LLMatcher.grammar_from_lark(choice_lark(_json(spec), spec.param))
    return llg.LLMatcher.grammar_from_lark(spec.text)


def bounded_numbers(schema: Any) -> Any:
    """The schema with every unbounded integer / number kept within ±(2**53 - 1), and numbers to
    at most six decimals.

    llguidance has no length control, and a small model that starts a number may write digits
    until max_tokens ("1111…"). Bounding a number bounds its integer digits (16 at most) so the
    grammar itself closes it; 2**53 - 1 is the largest integer JSON carries exactly between
    implementations (RFC 7493, I-JSON). An explicit bound in the schema wins.
    """
    if isinstance(schema, list):
        return [bounded_numbers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_numbers(value) if key not in ("enum", "const", "default", "examples") else value
           for key, value in schema.items()}
    kinds = out.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "integer" in kinds or "number" in kinds:
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = _SAFE_INTEGER
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -_SAFE_INTEGER
    if "number" in kinds and "multipleOf" not in out:
        out["multipleOf"] = _NUMBER_STEP
    return out


_SAFE_INTEGER = 2**53 - 1
# Fraction digits are bounded the only way JSON Schema can: a multiple of 1e-6 has at most six,
# so "0.000000000…" cannot run to max_tokens either. Plain decimals only (no exponent).
_NUMBER_STEP = 1e-6


def choice_lark(choices: object, param: str = "structured_outputs") -> str:
    """A Lark grammar matching exactly one of `choices` (non-empty strings)."""
    if not (isinstance(choices, list) and choices and all(isinstance(c, str) and c for c in choices)):
        raise GrammarError(f"choice must be a non-empty list of non-empty strings, got {choices!r}"[:300], param=param)
    return "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _json(spec: GrammarSpec) -> Any:
    try:
        return json.loads(spec.text)
    except ValueError as exc:
        raise GrammarError(f"the {spec.kind} grammar is not valid JSON: {exc}", param=spec.param) from exc


def _first_lines(message: str, num_lines: int = 6) -> str:
    return "\n".join(message.strip().splitlines()[:num_lines])


def backend_for(tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> LLGuidanceBackend:
    """The backend for a Luodi `Tokenizer` (its `tokenizers` backend serialized on first use)."""
    return LLGuidanceBackend(lambda: tokenizer.backend.to_str(), eos_token_ids, vocab_size)
