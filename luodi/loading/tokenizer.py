"""`Tokenizer`: text <-> token ids and chat templates, for GGUF files and HF directories.

Owns: building a `tokenizers.Tokenizer` from GGUF metadata (byte-level BPE for `gpt2` vocabularies,
SentencePiece-style BPE with byte fallback for `llama` ones, as Gemma uses), loading an HF
`tokenizer.json`, BOS/EOS handling, and rendering chat templates in a jinja2 sandbox the way
transformers does. Must not know: models, weights, devices, requests. The engine never calls this;
the API layer does, before and after.

The GGUF builders follow llama.cpp (`src/llama-vocab.cpp`) and transformers'
`integrations/gguf/gguf_tokenizer_mapping.py`, which the tests use as the oracle.

Text that a user or a document supplies is text, never control tokens: `encode_chat` turns only
the chat template's own special tokens (`<|im_start|>`, `<start_of_turn>`, ...) into their ids, so
a message or a knowledge-base passage that spells one cannot forge a turn; and
`encode(..., split_special_tokens=True)` (transformers' name) does the same for a raw prompt.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from luodi.errors import InvalidParameterError, ModelFormatError, ModelNotFoundError

if TYPE_CHECKING:
    from luodi.loading.gguf import GGUFFile

logger = logging.getLogger(__name__)

# GGUF token types (llama.cpp `llama_token_type`).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer split regexes by `tokenizer.ggml.pre` (llama.cpp `llama_vocab::impl::load`).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_REGEXES = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# GPT-2's regex with every digit split off first (HF: Digits(individual_digits=True)).
_DIGIT_SPLIT_PRES = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_GPT2_PRES = {"default", "gpt-2", "gpt2", "olmo", "jais", "poro-chat", "viking", "tekken"}
_GEMMA_ARCHS = {"gemma", "gemma2", "gemma3"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class ChatTemplateError(InvalidParameterError):
    """A chat template that is missing, does not compile, or rejects the messages it is given."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages")


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what Luodi needs around it: BOS/EOS ids and the chat template."""

    def __init__(
        self,
        backend: Backend,
        *,
        bos_token: str | None,
        eos_tokens: Sequence[str] = (),
        extra_eos_ids: Iterable[int] = (),
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_tokens[0] if eos_tokens else None
        self.bos_token_id = self._id_of(bos_token)
        eos_ids = {self._id_of(t) for t in eos_tokens} | {int(i) for i in extra_eos_ids}
        self.eos_token_ids: frozenset[int] = frozenset(i for i in eos_ids if i is not None)
        self.chat_template = chat_template or None
        # Variables the template sees besides messages: bos_token, eos_token, unk_token, pad_token.
        self.special_tokens = {"bos_token": bos_token or "", "eos_token": self.eos_token or ""}
        self.special_tokens.update(special_tokens or {})
        empty = backend.encode("", add_special_tokens=True).ids
        self.add_bos_token = self.bos_token_id is not None and empty[:1] == [self.bos_token_id]
        self._text_backend: Backend | None = None  # the same tokenizer, reading special tokens as text
        self.special_tokens_pattern = _specials_pattern(backend)  # any special token's spelling; None: none

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def __repr__(self) -> str:
        eos = sorted(self.eos_token_ids)
        return f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos_ids={eos})"

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, f: GGUFFile, extra_eos_ids: Iterable[int] = ()) -> Tokenizer:
        """The tokenizer a GGUF file's `tokenizer.ggml.*` metadata describes; `extra_eos_ids` are
        further ids that end generation, which the model's config names (Gemma's <end_of_turn>)."""
        meta = f.metadata
        kind = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ModelFormatError(f"{f.path} has no tokenizer.ggml.tokens; it carries no tokenizer")
        if kind == "gpt2":
            backend = _byte_level_bpe(meta)
        elif kind == "llama":
            backend = _sentencepiece_bpe(meta, is_gemma=meta.get("general.architecture") in _GEMMA_ARCHS)
        else:
            raise ModelFormatError(
                f"{f.path} has tokenizer.ggml.model={kind!r}; supported are 'gpt2' (byte-level BPE) and "
                "'llama' (SentencePiece BPE)"
            )
        _add_gguf_special_tokens(backend, meta, byte_level=kind == "gpt2")
        bos, eos = _token_at(tokens, meta.get("tokenizer.ggml.bos_token_id")), _gguf_eos(meta)
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
        add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
        backend.post_processor = _template_processing(
            backend, bos if add_bos else None, eos if add_eos else None
        )
        from luodi.loading.gguf import gguf_eos_token_ids  # the config's EOS set, shared

        return cls(
            backend,
            bos_token=bos,
            eos_tokens=[eos] if eos else [],
            extra_eos_ids=(*gguf_eos_token_ids(f), *extra_eos_ids),
            chat_template=meta.get("tokenizer.chat_template"),
            special_tokens=_gguf_named_tokens(meta, tokens),
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """The tokenizer of an HF model directory: tokenizer.json, tokenizer_config.json, and the EOS
        ids of generation_config.json / config.json when present."""
        directory = Path(path)
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelNotFoundError(
                f"{directory} has no tokenizer.json; Luodi needs the fast-tokenizer file an HF model ships"
            )
        try:
            backend = Backend.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ModelFormatError(f"{tokenizer_file} is not a valid tokenizer.json ({exc})") from exc
        config = _read_json(directory / "tokenizer_config.json")
        bos, eos = _token_content(config.get("bos_token")), _token_content(config.get("eos_token"))
        if "add_bos_token" in config or "add_eos_token" in config or backend.post_processor is None:
            # transformers rebuilds the post-processor from these flags
            # (TokenizersBackend.update_post_processor).
            add_bos, add_eos = config.get("add_bos_token", False), config.get("add_eos_token", False)
            backend.post_processor = _template_processing(
                backend, bos if add_bos else None, eos if add_eos else None
            )
        named = {k: _token_content(config.get(k)) or "" for k in ("unk_token", "pad_token") if config.get(k)}
        return cls(
            backend,
            bos_token=bos,
            eos_tokens=[eos] if eos else [],
            extra_eos_ids=_hf_eos_ids(directory),
            chat_template=_hf_chat_template(directory, config),
            special_tokens=named,
        )

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and chat_template.jinja (HF layout)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens}
        config = {k: v for k, v in config.items() if v}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if self.chat_template:
            (out / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")

    # -- text <-> ids ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True, *, split_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, BOS/EOS as the model's tokenizer adds them.
        With `split_special_tokens`, a special token's spelling in `text` is plain text (for text
        from users or documents), as transformers' flag of that name does."""
        backend = self._text_backend_or_build() if split_special_tokens else self.backend
        try:
            return _encode_releasing_the_gil(backend, text, add_special_tokens)
        except TypeError:
            if not isinstance(text, str):
                raise
            # Lone surrogates (legal in JSON "\ud800" escapes, not in UTF-8) -> U+FFFD, as a decoder would.
            clean = _LONE_SURROGATE.sub("\ufffd", text)
            return _encode_releasing_the_gil(backend, clean, add_special_tokens)

    def _text_backend_or_build(self) -> Backend:
        # A second backend, not a toggle on the first: encoding runs in several threads at once.
        if self._text_backend is None:
            text_backend = Backend.from_str(self.backend.to_str())
            text_backend.encode_special_tokens = True
            self._text_backend = text_backend
        return self._text_backend

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    # -- chat --------------------------------------------------------------------------------------

    def with_chat_template(self, chat_template: str | None) -> Tokenizer:
        """The same tokenizer with another chat template (a user override, e.g. `--chat-template`)."""
        clone = copy.copy(self)
        clone.chat_template = chat_template or None
        return clone

    @property
    def special_token_ids(self) -> dict[str, int]:
        """Each special token's spelling -> its id (a grammar names such a token by id, not by text)."""
        return {t.content: i for i, t in self.backend.get_added_tokens_decoder().items() if t.special and t.content}

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """The prompt text for `messages`, rendered as transformers' `apply_chat_template(tokenize=False)`."""
        if self.chat_template is None:
            raise ChatTemplateError(
                "this model has no chat template (base models like gemma3-270m do not); use the "
                "completions API with a plain prompt, or pick an instruction-tuned model"
            )
        template = _compile_template(self.chat_template)
        variables = {**self.special_tokens, **kwargs}
        try:
            return template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template rejected the messages: {exc}") from exc

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Token ids of the rendered chat (`tools`: the template's variable of that name, as
        transformers passes it). BOS is added (as llama.cpp does) only when the tokenizer
        adds one and the template has not already written it. Special tokens spelled in the messages
        (contents, call arguments) or the tools are text: only those the template writes itself
        become control tokens."""
        specials = self.special_tokens_pattern
        extra = {"tools": tools} if tools else {}
        if specials is None or not _spells_special([messages, tools], specials):
            text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **extra)
            ids = self.encode(text, add_special_tokens=False)
        else:
            text, ids = self._encode_chat_guarded(messages, add_generation_prompt, specials, extra)
        if self.add_bos_token and self.bos_token and not text.startswith(self.bos_token):
            assert self.bos_token_id is not None
            ids.insert(0, self.bos_token_id)
        return ids

    def _encode_chat_guarded(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool, specials: re.Pattern[str],
        extra: dict[str, Any],
    ) -> tuple[str, list[int]]:
        """Render with each special token in the contents stood in for by a marker no client can
        guess, so the template's own special tokens are the only ones left in the rendered text;
        tokenize it split at those, with the contents' spellings put back as text."""
        nonce = secrets.token_hex(8)
        found: list[str] = []

        def stand_in(match: re.Match[str]) -> str:
            found.append(match.group())
            return f"\ue000{nonce}:{len(found) - 1}\ue001"

        def guard(value: Any) -> Any:  # every string the template may write: contents, calls, tools
            if isinstance(value, str):
                return specials.sub(stand_in, value)
            if isinstance(value, dict):
                return {key: guard(item) for key, item in value.items()}
            return [guard(item) for item in value] if isinstance(value, list) else value

        rendered = self.apply_chat_template(guard(messages), add_generation_prompt=add_generation_prompt,
                                            **guard(extra))
        ids: list[int] = []
        marker = re.compile(f"\ue000{nonce}:(\\d+)\ue001")
        pieces = specials.split(rendered)  # text, special, text, special, ..., text (capturing group)
        for index, piece in enumerate(pieces):
            if index % 2:  # a special token the template wrote
                ids.append(self.backend.token_to_id(piece))
            elif piece:
                text = marker.sub(lambda m: found[int(m.group(1))], piece)
                ids.extend(self.encode(text, add_special_tokens=False, split_special_tokens=True))
        return marker.sub(lambda m: found[int(m.group(1))], rendered), ids


def _encode_releasing_the_gil(backend: Backend, text: str, add_special_tokens: bool) -> list[int]:
    # `encode` holds the GIL throughout (measured: a 3.5 MB text stalled every other thread for
    # seconds); `encode_batch` releases it, so a server thread tokenizing a huge prompt stalls nothing.
    return backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids


# -- chat templates --------------------------------------------------------------------------------


def _specials_pattern(backend: Backend) -> re.Pattern[str] | None:
    """A regex (one capturing group) matching any special token's spelling, longest first."""
    spellings = sorted(
        {t.content for t in backend.get_added_tokens_decoder().values() if t.special and t.content},
        key=len, reverse=True,
    )
    return re.compile("(" + "|".join(map(re.escape, spellings)) + ")") if spellings else None


def _spells_special(value: Any, specials: re.Pattern[str]) -> bool:
    """True when a string anywhere in `value` (messages, their calls, tool definitions) spells one."""
    if isinstance(value, str):
        return specials.search(value) is not None
    if isinstance(value, dict):
        return any(_spells_special(item, specials) for item in value.values())
    return isinstance(value, list) and any(_spells_special(item, specials) for item in value)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # transformers overrides jinja's tojson, which escapes HTML characters, with plain json.dumps.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@cache
def _compile_template(source: str) -> jinja2.Template:
    """The template compiled as transformers' `_compile_jinja_template` does (sandboxed)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"the model's chat template does not compile: {exc} (line {exc.lineno})"
        ) from exc


# -- GGUF builders ---------------------------------------------------------------------------------


@cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (openai/gpt-2 encoder.py `bytes_to_unicode`)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _byte_level_bpe(meta: dict[str, Any]) -> Backend:
    """GPT-2 style byte-level BPE, with the file's merges and its pre-tokenizer regex."""
    table = _byte_to_unicode()
    alphabet = set(table.values())
    vocab: dict[str, int] = {}
    for index, token in enumerate(meta["tokenizer.ggml.tokens"]):
        # A token outside the byte alphabet is a llama.cpp spelling; respell it byte-level.
        spelled = token if set(token) <= alphabet else "".join(table[b] for b in token.encode("utf-8"))
        vocab[spelled] = index
    merges = [_split_merge(m) for m in meta.get("tokenizer.ggml.merges", [])]
    backend = Backend(BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=False))
    backend.pre_tokenizer = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    return backend


def _split_merge(merge: str) -> tuple[str, str]:
    left, _, right = merge.partition(" ")
    return left, right


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    if pre in _SPLIT_REGEXES:
        split = pre_tokenizers.Split(Regex(_SPLIT_REGEXES[pre]), behavior="isolated")
        return pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRES:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre not in _GPT2_PRES and pre is not None:
        logger.warning("GGUF pre-tokenizer %r is not known to Luodi; splitting text with GPT-2's regex", pre)
    return byte_level


def _sentencepiece_bpe(meta: dict[str, Any], is_gemma: bool) -> Backend:
    """SentencePiece BPE (llama.cpp's SPM vocab): ▁ for spaces, <0xNN> byte fallback."""
    tokens = list(meta["tokenizer.ggml.tokens"])
    if is_gemma:
        # Gemma stores tokens of 2+ spaces as real spaces; the normalizer turns text spaces into ▁.
        tokens = ["▁" * len(t) if t and not t.strip(" ") else t for t in tokens]
    vocab = {token: index for index, token in enumerate(tokens)}
    if "tokenizer.ggml.merges" in meta:
        merges = [_split_merge(m) for m in meta["tokenizer.ggml.merges"]]
    elif is_gemma:
        # Gemma's scores are all 0; its merge order is the order of the vocabulary (as transformers).
        merges = _merges_from_vocab(tokens, vocab, [-i for i in range(len(tokens))])
    else:
        merges = _merges_from_vocab(tokens, vocab, meta["tokenizer.ggml.scores"].tolist())
    unk = _token_at(tokens, meta.get("tokenizer.ggml.unknown_token_id"))
    backend = Backend(
        BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None)
    )
    parts = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if is_gemma:  # transformers' GemmaTokenizer: no prefix space
        backend.normalizer = normalizers.Replace(" ", "▁")
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    else:  # transformers' LlamaTokenizer (legacy=False)
        add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        scheme = "first" if add_prefix else "never"
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        if add_prefix:
            parts.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(parts)
    return backend


def _merges_from_vocab(
    tokens: list[str], vocab: dict[str, int], priority: list[float]
) -> list[tuple[str, str]]:
    """Every (left, right) split of a token into two tokens, best first: by the merged token's
    priority, then longer left part, then vocabulary order (transformers' `generate_merges`)."""
    scores = dict(zip(tokens, priority, strict=True))
    found = []
    for order, (token, score) in enumerate(scores.items()):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                found.append((-score, -cut, cut - len(token), order, vocab[left], vocab[right], left, right))
    found.sort(key=lambda m: m[:6])
    return [(m[6], m[7]) for m in found]


def _add_gguf_special_tokens(backend: Backend, meta: dict[str, Any], byte_level: bool) -> None:
    """Control tokens (type 3) become special tokens and user-defined ones (type 4) plain added
    tokens, so neither is ever split. A "control" token outside the byte alphabet of a byte-level
    vocabulary is a llama.cpp mislabel and is skipped, as transformers does."""
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type")
    if types is None:
        return
    alphabet = set(_byte_to_unicode().values()) if byte_level else None
    type_list = types.tolist()
    control = [
        AddedToken(tok, normalized=False, special=True)
        for tok, kind in zip(tokens, type_list, strict=True)
        if kind == _CONTROL and (alphabet is None or set(tok) <= alphabet)
    ]
    backend.add_special_tokens(control)
    vocab = backend.get_vocab(with_added_tokens=False)
    user = [
        AddedToken(tok, normalized=False, special=False)
        for tok, kind in zip(tokens, type_list, strict=True)
        if kind == _USER_DEFINED and tok in vocab
    ]
    backend.add_tokens(user)


def _template_processing(backend: Backend, bos: str | None, eos: str | None) -> processors.TemplateProcessing:
    single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
    pair = f"{single} " + " ".join([*([f"{bos}:1"] if bos else []), "$B:1", *([f"{eos}:1"] if eos else [])])
    specials = [(t, backend.token_to_id(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _token_at(tokens: Sequence[str], index: Any) -> str | None:
    if index is None or not 0 <= int(index) < len(tokens):
        return None
    return tokens[int(index)]


def _gguf_eos(meta: dict[str, Any]) -> str | None:
    return _token_at(meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.eos_token_id"))


def _gguf_named_tokens(meta: dict[str, Any], tokens: Sequence[str]) -> dict[str, str]:
    named = {}
    for name, key in (("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        token = _token_at(tokens, meta.get(f"tokenizer.ggml.{key}"))
        if token is not None:
            named[name] = token
    return named


# -- HF directories --------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(
            f"{path} is not valid JSON ({exc}); restore the file from the model's source"
        ) from exc
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _hf_eos_ids(directory: Path) -> set[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        value = _read_json(directory / name).get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return ids


def _hf_chat_template(directory: Path, config: dict[str, Any]) -> str | None:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template") or _read_json(directory / "chat_template.json").get(
        "chat_template"
    )
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None
