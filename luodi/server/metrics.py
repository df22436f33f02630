"""Prometheus metrics for `/metrics`: HTTP requests by status, engine load, KV cache, latencies, tokens.

Owns one `CollectorRegistry` per app (so several servers in one process never share counters),
the counters and histograms the request path updates, and a collector that reads the engine's
live state — queue depth, running sequences, KV blocks used and free, prefix-cache hits,
speculative draft tokens verified and accepted — at scrape time, so a scrape always shows the
present, not the last update.

Latency definitions follow vLLM's metric names: time to first token is from the request's
admission to its first generated token; time per output token is, per finished request, the
mean gap between its output tokens after the first ((last - first) / (n - 1)).

Must not know about routes or the protocol. Reads the engine only through small public
properties (scheduler queues, KV pool counts, prefix-cache and step stats); takes no engine lock, since
each value read is one atomic `len` or int.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from luodi.engine.engine import LLMEngine

# Seconds; spans an interactive first token (tens of ms) to a long queue under load (minutes).
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
# The field's interactivity target is <= 100 ms per token; resolve well around it.
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)


class _EngineCollector(Collector):
    """Gauges and counters read from the engine (and the server's admission count) at scrape time."""

    def __init__(self, engine: Callable[[], LLMEngine | None], num_admitted: Callable[[], int]) -> None:
        self._engine = engine
        self._num_admitted = num_admitted

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "luodi_num_requests_admitted",
            "Requests the server has accepted and not yet finished (running + queued).",
            value=self._num_admitted(),
        )
        engine = self._engine()
        if engine is None:
            return  # still loading: only what the server itself knows
        scheduler, kv = engine.scheduler, engine.kv
        yield GaugeMetricFamily(
            "luodi_num_requests_waiting",
            "Requests queued in the engine, not yet running.",
            value=len(scheduler.waiting),
        )
        yield GaugeMetricFamily(
            "luodi_num_requests_running", "Sequences in the running batch.", value=len(scheduler.running)
        )
        free = kv.num_free_blocks
        yield GaugeMetricFamily("luodi_kv_blocks_total", "KV cache blocks in the pool.", value=kv.num_blocks)
        yield GaugeMetricFamily(
            "luodi_kv_blocks_free",
            "KV cache blocks no request holds (some may still cache a prefix).",
            value=free,
        )
        yield GaugeMetricFamily(
            "luodi_kv_blocks_used", "KV cache blocks held by requests.", value=kv.num_blocks - free
        )
        stats = kv.stats
        yield CounterMetricFamily(
            "luodi_prefix_cache_queries_tokens",
            "Prompt tokens looked up in the prefix cache.",
            value=stats.queries,
        )
        yield CounterMetricFamily(
            "luodi_prefix_cache_hits_tokens", "Prompt tokens found in the prefix cache.", value=stats.hits
        )
        yield GaugeMetricFamily(
            "luodi_prefix_cache_hit_rate",
            "Prefix-cache hits / queries since start (tokens).",
            value=stats.hit_rate,
        )
        yield CounterMetricFamily(
            "luodi_engine_busy_seconds",
            "Seconds the engine spent in model steps.",
            value=engine.stats.seconds,
        )
        yield CounterMetricFamily(
            "luodi_spec_decode_draft_tokens",
            "Speculative draft tokens (prompt lookup) verified by the model.",
            value=engine.stats.num_draft_tokens,
        )
        yield CounterMetricFamily(
            "luodi_spec_decode_accepted_tokens",
            "Of the speculative draft tokens, those the model accepted.",
            value=engine.stats.num_accepted_tokens,
        )


class ServerMetrics:
    def __init__(self, engine: Callable[[], LLMEngine | None], num_admitted: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "luodi_http_requests", "HTTP requests by route and status code.", ["route", "status"], registry=r
        )
        self.requests_finished = Counter(
            "luodi_requests_finished",
            "Generation requests by finish reason (abort: the client went away).",
            ["finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter("luodi_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("luodi_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(
            "luodi_time_to_first_token_seconds",
            "Time from admission to the first token.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "luodi_time_per_output_token_seconds",
            "Mean time between output tokens of a request (after the first).",
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        r.register(_EngineCollector(engine, num_admitted))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
