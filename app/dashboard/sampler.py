"""Live load for the dashboard: a bounded ring of per-model samples taken from ops/metrics.

Off the data path: a background task reads the request, latency and batch-size metrics every
`interval_seconds`, turns the change since the previous reading into rates (requests/s,
errors/s), latency quantiles (p50/p99 from the latency histogram's buckets) and the mean
executed batch size (rows per model run), and keeps the last `window_seconds` of them.
Memory is fixed: the ring holds at most window/interval samples, and the models in one sample
are those the metrics know (configured names plus one "<unknown>" label), capped at
MAX_MODELS. Event-loop only.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from app.ops.metric_types import Counter, Histogram
from app.ops.metrics import Metrics

log = logging.getLogger("tfgate.dashboard")

DEFAULT_INTERVAL_SECONDS = 1.0
DEFAULT_WINDOW_SECONDS = 300.0
# A sample names at most this many models: the metrics' model labels are bounded by the
# config already; this bounds a sample even for a config of thousands of models.
MAX_MODELS = 200
SERIES = ("requests_per_second", "errors_per_second", "latency_p50_ms", "latency_p99_ms",
          "mean_batch_size")


@dataclasses.dataclass
class Reading:
    """Cumulative totals of one model at one instant (what the metrics hold)."""

    requests: float = 0.0
    errors: float = 0.0
    latency_buckets: list[int] = dataclasses.field(default_factory=list)
    batches: int = 0
    batch_rows: float = 0.0


def read_metrics(metrics: Metrics) -> dict[str, Reading]:
    """Per model: requests and errors from request_count, the latency histogram summed over
    its API and entrypoint labels, executed batches and their rows from executed_batch_rows."""
    readings: dict[str, Reading] = {}

    def reading(model: str) -> Reading | None:
        found = readings.get(model)
        if found is None and len(readings) < MAX_MODELS:
            found = readings[model] = Reading()
        return found

    count: Counter = metrics.request_count
    for (model, status), value in list(count.values.items()):
        entry = reading(model)
        if entry is not None:
            entry.requests += value
            if status != "OK":
                entry.errors += value
    latency: Histogram = metrics.request_latency
    for labels, buckets in list(latency.counts.items()):
        entry = reading(labels[0])
        if entry is None:
            continue
        if not entry.latency_buckets:
            entry.latency_buckets = [0] * len(buckets)
        for i, n in enumerate(buckets):
            entry.latency_buckets[i] += n
    # Every model run in a worker, batched or not (processed_batch_size counts only what the
    # batcher assembled), padding rows included.
    batch: Histogram = metrics.executed_batch_rows
    for labels, buckets in list(batch.counts.items()):
        entry = reading(labels[0])
        if entry is not None:
            entry.batches += sum(buckets)
            entry.batch_rows += batch.sums.get(labels, 0.0)
    return readings


def quantile_micros(
    bucket_counts: Sequence[int], bounds: Sequence[float], q: float
) -> float | None:
    """The q-quantile of a histogram's per-bucket counts (the last one is +Inf), linearly
    interpolated inside its bucket as Prometheus' histogram_quantile does; None when empty.
    A quantile in the +Inf bucket answers the highest finite bound."""
    total = sum(bucket_counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for i, n in enumerate(bucket_counts):
        if n and cumulative + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - cumulative) / n
        cumulative += n
    return bounds[-1]


def sample_between(
    before: dict[str, Reading], after: dict[str, Reading], seconds: float,
    bounds: Sequence[float],
) -> dict[str, dict[str, float | None]]:
    """One point per model from two readings `seconds` apart. A counter that went down (it
    cannot, but a reset must not chart a negative rate) counts from zero."""
    point: dict[str, dict[str, float | None]] = {}
    seconds = max(seconds, 1e-6)
    for model, now in after.items():
        then = before.get(model, Reading())
        requests = _delta(now.requests, then.requests)
        errors = _delta(now.errors, then.errors)
        if len(then.latency_buckets) == len(now.latency_buckets):
            buckets = [max(0, a - b) for a, b in zip(now.latency_buckets, then.latency_buckets,
                                                      strict=True)]
        else:
            buckets = list(now.latency_buckets)
        batches = _delta(now.batches, then.batches)
        rows = _delta(now.batch_rows, then.batch_rows)
        p50 = quantile_micros(buckets, bounds, 0.5)
        p99 = quantile_micros(buckets, bounds, 0.99)
        point[model] = {
            "requests_per_second": round(requests / seconds, 3),
            "errors_per_second": round(errors / seconds, 3),
            "latency_p50_ms": None if p50 is None else round(p50 / 1000, 3),
            "latency_p99_ms": None if p99 is None else round(p99 / 1000, 3),
            "mean_batch_size": round(rows / batches, 3) if batches else None,
        }
    return point


def _delta(now: float, then: float) -> float:
    return now - then if now >= then else now


class LoadSampler:
    """Samples `metrics` every `interval_seconds` into a ring of the last `window_seconds`.

    start() launches the task, close() cancels it; a failed sample is logged (once per
    distinct error in a row, so a persistent fault does not flood the log) and sampling goes
    on at the next tick."""

    def __init__(
        self,
        metrics: Metrics,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_seconds <= 0 or window_seconds < interval_seconds:
            raise ValueError("the sampler needs 0 < interval_seconds <= window_seconds")
        self.metrics = metrics
        self.interval_seconds = interval_seconds
        self.window_seconds = window_seconds
        self.capacity = math.ceil(window_seconds / interval_seconds)
        self._clock = clock
        self._wall_clock = wall_clock
        # (wall time, {model: one value per SERIES}): tuples, not dicts, to keep a full
        # ring of many models small (300 points x 200 models is 60k of them).
        self.points: collections.deque[tuple[float, dict[str, tuple[float | None, ...]]]] = (
            collections.deque(maxlen=self.capacity)
        )
        self._last: tuple[float, dict[str, Reading]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_failure = ""
        self.failures = 0

    def sample(self) -> None:
        """Take one reading; from the second on, append the point since the previous one."""
        now = self._clock()
        readings = read_metrics(self.metrics)
        if self._last is not None:
            then, previous = self._last
            bounds = self.metrics.request_latency.buckets
            point = sample_between(previous, readings, now - then, bounds)
            self.points.append((
                self._wall_clock(),
                {model: tuple(values[name] for name in SERIES) for model, values in point.items()},
            ))
        self._last = (now, readings)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dashboard-load-sampler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
                self._last_failure = ""
            except Exception as exc:  # logged; the next tick tries again
                self.failures += 1
                text = f"{type(exc).__name__}: {exc}"
                if text != self._last_failure:
                    log.error("Dashboard load sample failed: %s", text, exc_info=exc)
                    self._last_failure = text
            await asyncio.sleep(self.interval_seconds)

    def series(self, since: float | None = None) -> dict[str, Any]:
        """The window as columns: {"t": [wall seconds...], "models": {model: {series:
        [value or None per t]}}}; only points newer than `since` when given."""
        # Compared as answered (rounded to ms): a client passes back the last t it got.
        points = [p for p in self.points if since is None or round(p[0], 3) > since]
        times = [round(t, 3) for t, _ in points]
        models = sorted({m for _, point in points for m in point})
        columns: dict[str, dict[str, list[float | None]]] = {}
        for model in models:
            rows = [point.get(model) for _, point in points]
            columns[model] = {
                name: [None if row is None else row[i] for row in rows]
                for i, name in enumerate(SERIES)
            }
        return {
            "interval_seconds": self.interval_seconds,
            "window_seconds": self.window_seconds,
            "t": times,
            "models": columns,
        }


__all__ = ["LoadSampler", "quantile_micros", "read_metrics", "sample_between"]
