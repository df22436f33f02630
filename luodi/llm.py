"""`LLM`: a loaded model with its engine — the library entry point the CLI (and later apps) call.

Owns turning text into prompt ids (the chat template, or raw completion; either way the text is
text: a special token's spelling in it never becomes that control token — a raw prompt that needs
control tokens is given as token ids), running one request to
the end or streaming it, and measuring the two phases apart: time to first token (prompt
processing) and the decode rate after it. LoRA adapters given at load are served unmerged: a
request names one (`adapter=`) or runs on the base model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luodi.engine.engine import EngineConfig, LLMEngine, RequestOutput
from luodi.engine.sampling import SamplingParams
from luodi.kernels.report import KernelPath, device_kernel_paths, log_kernel_paths
from luodi.models.adapters import attach_adapters, read_adapter
from luodi.models.loader import LoadedModel, load_model
from luodi.models.native_stack import stack_path
from luodi.structured.guidance import backend_for

Message = dict[str, Any]  # OpenAI-shaped: role, content, and tool_calls / tool_call_id where present


@dataclass(slots=True)
class Completion:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str | None = None
    ttft_s: float = 0.0
    decode_s: float = 0.0

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        # The first token came out of prefill; the rate is over the tokens decoded after it.
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s and self.completion_tokens > 1 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "completion_token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "ttft_s": round(self.ttft_s, 6),
            "prefill_tok_s": round(self.prefill_tok_s, 2),
            "decode_tok_s": round(self.decode_tok_s, 2),
        }


def _kernel_paths(loaded: LoadedModel) -> tuple[KernelPath, ...]:
    """Which kernels this model runs on, and why (for the startup log and /health)."""
    device = next(loaded.model.parameters()).device.type
    paths = device_kernel_paths(device)
    return (*paths, stack_path(loaded.model)) if device == "cpu" else paths


class LLM:
    def __init__(self, loaded: LoadedModel, engine_config: EngineConfig = EngineConfig()) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        eos_token_ids = loaded.tokenizer.eos_token_ids | set(loaded.config.eos_token_ids)
        # Grammars (JSON Schema, regex, choice, Lark) are compiled against this tokenizer; its
        # llguidance form is built on the first constrained request, not here.
        grammars = backend_for(loaded.tokenizer, loaded.model.config.vocab_size, sorted(eos_token_ids))
        self.engine = LLMEngine(loaded.model, loaded.tokenizer, engine_config, eos_token_ids=eos_token_ids,
                                grammar_backend=grammars)
        self.kernel_paths = _kernel_paths(loaded)
        log_kernel_paths(self.kernel_paths)

    @classmethod
    def load(cls, model: str, *, device: str = "auto", dtype: str | None = None, progress: bool = False,
             engine_config: EngineConfig = EngineConfig(), adapters: Mapping[str, str | Path] | None = None) -> LLM:
        """`adapters`: name -> LoRA adapter directory (peft's format), each servable by name."""
        loaded = load_model(model, device=device, dtype=dtype, progress=progress)
        if adapters:
            attach_adapters(loaded.model, [read_adapter(name, path) for name, path in adapters.items()])
        return cls(loaded, engine_config)

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return self.engine.adapter_names

    @property
    def has_chat_template(self) -> bool:
        return self.tokenizer.has_chat_template

    @property
    def context_window(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        """Token ids the model accepts: [0, vocab_size)."""
        return self.loaded.config.vocab_size

    def prompt_ids(self, prompt: str | list[Message], *, raw: bool = False,
                   tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Chat messages (or one user turn) through the chat template (`tools`: the template's variable
        of that name); raw text as is. Special tokens spelled in the text are text; only the chat
        template writes control tokens."""
        if raw or not self.has_chat_template:
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            return self.tokenizer.encode(text, split_special_tokens=True)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return self.tokenizer.encode_chat(messages, tools=tools)

    def stream(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None) -> Iterator[RequestOutput]:
        """Run one request alone (on a LoRA adapter, if named), yielding its output after every step."""
        request_id = self.engine.add_request(prompt_ids, params, adapter=adapter)
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            self.engine.abort(request_id)  # a no-op when finished; frees blocks if the caller stopped early

    def complete(self, prompt_ids: list[int], params: SamplingParams, on_text=None,
                 adapter: str | None = None) -> Completion:
        """Run one request to the end; `on_text(delta)` sees the text as it is produced."""
        result = Completion(prompt_tokens=len(prompt_ids))
        start = time.perf_counter()
        first = None
        for out in self.stream(prompt_ids, params, adapter):
            if first is None:
                first = time.perf_counter()
            result.token_ids.extend(out.new_token_ids)
            result.text += out.new_text
            if on_text is not None and out.new_text:
                on_text(out.new_text)
            result.finish_reason = out.finish_reason
        end = time.perf_counter()
        result.ttft_s = (first or end) - start
        result.decode_s = end - (first or end)
        return result
