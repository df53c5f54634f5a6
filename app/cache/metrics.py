"""The result cache's Prometheus metrics: hits, misses, single-flight, bypasses, Redis errors,
latency and the circuit breaker's state.

Data path position: cache/result_cache.py counts every row it answers or sends on here;
main.py adds them to the server's registry (ops/metrics.py), which the scrape renders.
"""

from __future__ import annotations

from typing import Any

from app.cache.redis_client import CircuitBreaker
from app.ops.metric_types import CallbackGauge, Counter, Histogram
from app.ops.metrics import LATENCY_BUCKETS_MICROS


class CacheMetrics:
    """The cache's Prometheus metrics (main.py adds them to the server's registry)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.hits = Counter(
            "tfgate_cache_hits", "Rows answered from the Redis result cache.", ("model_name",)
        )
        self.misses = Counter(
            "tfgate_cache_misses",
            "Rows of cacheable requests that ran on the model.",
            ("model_name",),
        )
        self.coalesced = Counter(
            "tfgate_cache_coalesced",
            "Rows answered by a concurrent identical request's model run (single flight).",
            ("model_name",),
        )
        self.bypasses = Counter(
            "tfgate_cache_bypasses",
            "Requests (rows for too_large) of cached models that skipped the cache, by reason.",
            ("model_name", "reason"),
        )
        self.errors = Counter(
            "tfgate_cache_errors",
            "Failed Redis calls (timeout, refused, error reply) and undecodable entries.",
            ("op",),
        )
        self.redis_latency = Histogram(
            "tfgate_cache_redis_latency",
            "Wall time (in microseconds) of Redis calls, failed ones included.",
            ("op",),
            LATENCY_BUCKETS_MICROS,
        )
        self.breaker_state = CallbackGauge(
            "tfgate_cache_breaker_state",
            "Redis circuit breaker: 0 closed (calling Redis), 1 open, 2 half-open (probing).",
            (),
            lambda: [((), float(breaker.state))],
        )

    def all(self) -> list[Any]:
        return [
            self.hits,
            self.misses,
            self.coalesced,
            self.bypasses,
            self.errors,
            self.redis_latency,
            self.breaker_state,
        ]
