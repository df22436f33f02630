"""`ModelService`: the one served model behind the routes — loading, admission, and metered generation.

Owns the model's lifecycle (loading in the background, so the server answers 503 until it is
ready instead of refusing connections), the admission limit that turns an overfull queue into
429 rather than unbounded memory and latency, the checks a request must pass before its
response starts (the model name, the prompt fitting the context window), and the per-request
metrics (time to first token, time per output token, token counters, finish reasons).

A model with LoRA adapters is served under several ids: the base as `model_name`, each adapter as
`model_name:ADAPTER`; requests for any of them share one engine and its batches.

Must not know about HTTP or the OpenAI wire format: routes call it with prompt ids and
`SamplingParams` and receive `RequestOutput`s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

from luodi.engine.async_engine import AsyncLLMEngine
from luodi.engine.engine import LLMEngine, RequestOutput
from luodi.engine.sampling import SamplingParams
from luodi.errors import LuodiError
from luodi.kb.ingest.limits import DEFAULT_LIMITS, IngestLimits
from luodi.llm import LLM
from luodi.server.errors import ModelLoadingError, ModelNotServedError, QueueFullError
from luodi.server.limits import RequestLimits
from luodi.server.load import load_report
from luodi.server.metrics import ServerMetrics

log = logging.getLogger("luodi.server")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    model_name: str  # the id clients send as "model" and /v1/models lists
    max_queue: int = 64  # requests admitted beyond the running batch before 429
    max_body_bytes: int = 4 * 2**20  # ~1M tokens of text: far above any context window we serve
    max_upload_bytes: int = 64 * 2**20  # one document uploaded to a knowledge base
    kb_store: str | None = None  # where knowledge bases live: None = SQLite under $LUODI_HOME/kb
    calendars_dir: Path | None = None  # the schedule assistant's calendars: None = $LUODI_HOME/calendars
    api_keys_file: Path | None = None  # None: no auth (loopback only, or --insecure-no-auth)
    retry_after_s: int = 1  # told to clients refused with 429
    ingest_limits: IngestLimits = DEFAULT_LIMITS  # what one uploaded document may cost to read
    request_limits: RequestLimits = RequestLimits()  # per-request caps: stop strings, logit_bias, messages, tools
    # Host names a key-less server answers (any port), against DNS rebinding; None: any Host (a
    # network bind with --insecure-no-auth). A server with keys checks none: a page cannot send the key.
    allowed_hosts: tuple[str, ...] | None = ("localhost", "127.0.0.1", "[::1]")
    hardware: str | None = None  # the class a gateway knows this replica by; None: from the device / CPU ISA


def hardware_class(llm: LLM) -> str:
    """"cuda:<device name>" on a GPU, else "cpu-<ISA level the kernels use>" (e.g. cpu-avx2)."""
    import torch

    from luodi.kernels.isa import cpu_isa

    device = next(llm.engine.model.parameters()).device
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu-{cpu_isa().level}"


class Admission:
    """One admitted request's place in the server; `release` is idempotent (called from two paths)."""

    def __init__(self, service: ModelService) -> None:
        self._service = service
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._service._num_admitted -= 1  # only the event loop thread admits and releases


class ModelService:
    def __init__(self, config: ServerConfig, load: Callable[[], LLM]) -> None:
        self.config = config
        self._load = load
        self._llm: LLM | None = None
        self._engine: AsyncLLMEngine | None = None
        self._num_admitted = 0
        self.status = "loading"
        self.detail: str | None = None
        self.metrics = ServerMetrics(self._sync_engine, lambda: self._num_admitted)
        self._thread: threading.Thread | None = None
        self.started_at = time.time()

    @classmethod
    def from_llm(cls, config: ServerConfig, llm: LLM) -> ModelService:
        """A service for a model that is already loaded (tests, embedding in another program)."""
        service = cls(config, lambda: llm)
        service._ready(llm)
        return service

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, on_failure: Callable[[str], None] | None = None) -> None:
        """Load the model in a background thread (no-op when already loaded or loading)."""
        if self._llm is not None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._load_now, args=(on_failure,), name="luodi-load", daemon=True
        )
        self._thread.start()

    def _load_now(self, on_failure: Callable[[str], None] | None) -> None:
        from luodi.kernels.native_build import add_compile_listener

        remove_listener = add_compile_listener(self._compiling)
        try:
            self._ready(self._load())
            log.info("model %s is ready", self.config.model_name)
        except LuodiError as exc:
            self._failed(str(exc), on_failure)
        except Exception as exc:  # a bug while loading: keep serving errors, log the traceback
            log.exception("loading %s failed", self.config.model_name)
            self._failed(
                f"internal error while loading the model ({type(exc).__name__}); see the server log",
                on_failure,
            )
        finally:
            remove_listener()

    def _compiling(self, what: str | None) -> None:
        """While a first start compiles the native kernels (minutes on a small machine), /health and
        the log say so; status stays "loading"."""
        if self.status != "loading":
            return
        self.detail = f"compiling {what} (first start only)" if what else None
        if what:
            log.info("compiling %s (first start only; a few minutes on a small machine)", what)

    def _ready(self, llm: LLM) -> None:
        self._engine = AsyncLLMEngine(llm.engine)
        self._llm = llm
        self.status = "ok"

    def _failed(self, detail: str, on_failure: Callable[[str], None] | None) -> None:
        self.status, self.detail = "failed", detail
        log.error("cannot serve %s: %s", self.config.model_name, detail)
        if on_failure is not None:
            on_failure(detail)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()

    def load(self) -> dict | None:
        """The load and speed figures of `luodi.server.load` (None until the model is ready)."""
        if self._llm is None:
            return None
        hardware = self.config.hardware or hardware_class(self._llm)
        return load_report(self._llm.engine, self._num_admitted, hardware, self.started_at)

    def kernels(self) -> dict[str, str] | None:
        """Which kernels serve the model and why, by group (None until the model is ready)."""
        if self._llm is None:
            return None
        return {path.kernels: path.summary() for path in self._llm.kernel_paths}

    def _sync_engine(self) -> LLMEngine | None:
        return self._llm.engine if self._llm is not None else None

    # -- checks before a response starts --------------------------------------------------------
    def model_ids(self) -> list[str]:
        """The ids clients may send as "model": the base's, then one per adapter (once loaded)."""
        names = self._llm.adapter_names if self._llm is not None else ()
        return [self.config.model_name, *(f"{self.config.model_name}:{name}" for name in names)]

    def adapter_for(self, requested_model: str | None) -> str | None:
        """The adapter a model id names (None: the base); call after `ready_llm` has checked the id."""
        if requested_model is None or requested_model == self.config.model_name:
            return None
        return requested_model.removeprefix(f"{self.config.model_name}:")

    def ready_llm(self, requested_model: str | None = None) -> LLM:
        """The loaded model; 503 while loading (or failed), 404 if the client named another model."""
        if self._llm is None:
            message = (
                f"the model {self.config.model_name} failed to load: {self.detail}"
                if self.status == "failed"
                else f"the model {self.config.model_name} is still loading; "
                "retry shortly (GET /health says when it is ready)"
            )
            raise ModelLoadingError(message, headers={"Retry-After": "5"})
        if requested_model is not None and requested_model not in self.model_ids():
            served = ", ".join(repr(m) for m in self.model_ids())
            raise ModelNotServedError(
                f"model {requested_model!r} is not served here; this server serves {served} (GET /v1/models)",
                param="model",
            )
        return self._llm

    def check_prompt(
        self, prompt_ids: list[int], params: SamplingParams, prompt_param: str = "prompt",
        adapter: str | None = None, resume_ids: list[int] | None = None,
    ) -> None:
        """The engine's own checks, made before a streamed response has sent its 200 status."""
        self.ready_llm().engine.check_request(prompt_ids, params, prompt_param, adapter=adapter,
                                              resume_ids=resume_ids or ())

    def admit(self) -> Admission:
        """A place for one more request, or 429 when the running batch and the queue are full."""
        llm = self.ready_llm()
        capacity = llm.engine.config.max_num_seqs + self.config.max_queue
        if self._num_admitted >= capacity:
            raise QueueFullError(
                f"the server is at capacity ({capacity} requests running or queued); "
                f"retry after {self.config.retry_after_s} s",
                headers={"Retry-After": str(self.config.retry_after_s)},
            )
        self._num_admitted += 1
        return Admission(self)

    # -- generation --------------------------------------------------------------------------------
    async def generate(
        self, admission: Admission, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None,
        cache_salt: str | None = None, resume_ids: tuple[int, ...] = (),
    ) -> AsyncGenerator[RequestOutput, None]:
        """Stream one admitted request (on `adapter`, if named; sharing cached prompt blocks only with
        requests of the same `cache_salt`); leaving early (a client gone) aborts it and frees its blocks."""
        assert self._engine is not None, "admit() guarantees a loaded model"
        m = self.metrics
        start = time.perf_counter()
        first = last = 0.0
        final: RequestOutput | None = None
        reason = "abort"
        try:
            async for out in self._engine.generate(prompt_ids, params, adapter=adapter, cache_salt=cache_salt,
                                                   resume_ids=resume_ids or ()):
                last = time.perf_counter()
                if final is None:
                    first = last
                    m.ttft.observe(first - start)
                    m.prompt_tokens.inc(len(prompt_ids))
                m.generation_tokens.inc(len(out.new_token_ids))
                final = out
                if out.finished:
                    reason = out.finish_reason or "stop"
                yield out
        except Exception:
            reason = "error"
            raise
        finally:
            admission.release()
            m.requests_finished.labels(reason).inc()
            if final is not None and final.num_output_tokens > 1:
                m.tpot.observe((last - first) / (final.num_output_tokens - 1))
