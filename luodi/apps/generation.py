"""Running an app's batch of constrained requests on an `LLM`, synchronously, in one engine batch.

Owns the default way apps generate: every request is added at once so the engine batches them and
the shared instruction prefix is computed once (prefix cache). The server passes its own
`Generate` (through its async engine) instead. Knows nothing of any app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from luodi.engine.sampling import SamplingParams
from luodi.llm import LLM

# prompts (token ids) and their params -> the generated texts, in order
Generate = Callable[[Sequence[list[int]], Sequence[SamplingParams]], list[str]]


def engine_generate(llm: LLM) -> Generate:
    def generate(prompts: Sequence[list[int]], params: Sequence[SamplingParams]) -> list[str]:
        ids = [llm.engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        texts = {i: "" for i in ids}
        pending = set(ids)
        try:
            while pending:
                for out in llm.engine.step():
                    if out.request_id in texts:
                        texts[out.request_id] += out.new_text
                        if out.finished:
                            pending.discard(out.request_id)
        finally:
            for request_id in pending:
                llm.engine.abort(request_id)
        return [texts[i] for i in ids]

    return generate


def stop_at_speakers(params: SamplingParams, names: Iterable[str]) -> SamplingParams:
    """`params` that also stop where a line "\nName:" begins: a small model goes on to write the
    other speakers' lines itself."""
    return replace(params, stop=(*params.stop, *(f"\n{name}:" for name in names)))
