"""Prometheus metrics for one server app (its own registry, so apps in one process don't clash).

Counters and latency histograms are fed by the routes through `RequestTrace`; the gauges
(running / queued requests, KV slots, cache hit rate) are read from `engine.stats()` when
`/metrics` is scraped. Names are prefixed `lmlang_`.
"""

from __future__ import annotations

import time
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Paths counted by name; anything else is counted as "other" (keeps label values bounded).
KNOWN_PATHS = frozenset({
    "/generate", "/v1/completions", "/v1/chat/completions", "/v1/models", "/program", "/health",
    "/model_info", "/get_model_info", "/tokenize", "/detokenize", "/flush_cache", "/metrics", "/stats",
    "/abort_request",
})


class ServerMetrics:
    """All metrics of one app; `render(stats)` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("lmlang_http_requests", "HTTP requests received, by path", ["path"], registry=r)
        self.requests = Counter("lmlang_requests", "Generation requests submitted to the engine, by endpoint",
                                ["endpoint"], registry=r)
        self.finished = Counter("lmlang_requests_finished", "Generation requests finished, by finish reason",
                                ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("lmlang_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.cached_tokens = Counter("lmlang_cached_prompt_tokens", "Prompt tokens served from the prefix cache",
                                     registry=r)
        self.generation_tokens = Counter("lmlang_generation_tokens", "Generated tokens", registry=r)
        self.running = Gauge("lmlang_num_requests_running", "Requests the engine is running", registry=r)
        self.waiting = Gauge("lmlang_num_requests_waiting", "Requests queued in the engine", registry=r)
        self.kv_slots = Gauge("lmlang_kv_slots", "KV cache slots by state (total, free, cached, in_use)", ["state"],
                              registry=r)
        self.cache_hit_rate = Gauge("lmlang_cache_hit_rate",
                                    "Share of prompt tokens served from the prefix cache since start", registry=r)
        self.engine_alive = Gauge("lmlang_engine_alive", "1 while the engine core process runs", registry=r)
        self.ttft = Histogram("lmlang_time_to_first_token_seconds", "Time from request to first output token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("lmlang_inter_token_latency_seconds", "Time between output tokens (streaming)",
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("lmlang_e2e_request_latency_seconds", "Time from request to its last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        # running sums for the hit rate (prometheus_client counters expose no public read)
        self.prompt_total = 0
        self.cached_total = 0

    def count_http(self, path: str) -> None:
        self.http_requests.labels(path if path in KNOWN_PATHS else "other").inc()

    def render(self, stats: Optional[dict], alive: bool) -> bytes:
        self.engine_alive.set(1 if alive else 0)
        if stats:
            self.running.set(stats.get("num_running", 0))
            self.waiting.set(stats.get("num_waiting", 0))
            for state in ("total", "free", "cached", "in_use"):
                if f"kv_{state}" in stats:
                    self.kv_slots.labels(state).set(stats[f"kv_{state}"])
        self.cache_hit_rate.set(self.cached_total / self.prompt_total if self.prompt_total else 0.0)
        return generate_latest(self.registry)


class RequestTrace:
    """Times one engine request and records it in `metrics` when it ends (exactly once)."""

    def __init__(self, metrics: ServerMetrics, endpoint: str) -> None:
        self.metrics = metrics
        self.start = time.perf_counter()
        self.first_token_at: Optional[float] = None
        self.last_token_at: Optional[float] = None
        self.tokens_seen = 0
        self.done = False
        metrics.requests.labels(endpoint).inc()

    def on_tokens(self, completion_tokens: int) -> None:
        """Called with the cumulative completion token count whenever new output arrives."""
        new = completion_tokens - self.tokens_seen
        if new <= 0:
            return
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
            self.metrics.ttft.observe(now - self.start)
            new -= 1
        elif self.last_token_at is not None:
            gap = (now - self.last_token_at) / new
            for _ in range(new):
                self.metrics.itl.observe(gap)
        self.last_token_at = now
        self.tokens_seen = completion_tokens

    def finish(self, meta_info: Optional[dict], error: Optional[str] = None) -> None:
        """Records the end: `meta_info` of the finished request, or None with an `error` label.

        A request that was not streamed has its time to first token only if the engine reports
        it (`meta_info["first_token_latency"]`, seconds).
        """
        if self.done:
            return
        self.done = True
        m = self.metrics
        if meta_info is not None:
            if self.first_token_at is None and meta_info.get("first_token_latency") is not None:
                m.ttft.observe(float(meta_info["first_token_latency"]))
            prompt, cached = int(meta_info.get("prompt_tokens", 0)), int(meta_info.get("cached_tokens", 0))
            m.prompt_tokens.inc(prompt)
            m.cached_tokens.inc(cached)
            m.prompt_total += prompt
            m.cached_total += cached
            m.generation_tokens.inc(int(meta_info.get("completion_tokens", 0)))
            reason = (meta_info.get("finish_reason") or {}).get("type", "unknown")
        else:
            reason = error or "error"
        m.finished.labels(reason).inc()
        m.e2e.observe(time.perf_counter() - self.start)
