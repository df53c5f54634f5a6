"""Measurement windows, percentiles and perf_analyzer's stability rule.

Used by bench/loadgen.py: every completed request adds its latency to the current window;
a level is stable when the last 3 windows agree within 10% on throughput and p99 latency.
SuiteResults holds one suite run's levels and in-process measurements.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

STABILITY_WINDOWS = 3
STABILITY_FRACTION = 0.10


@dataclasses.dataclass
class Window:
    """One measurement window: completions and errors between two instants."""

    seconds: float
    latencies_ns: list[int]
    errors: dict[str, int]

    @property
    def throughput(self) -> float:
        return len(self.latencies_ns) / self.seconds if self.seconds > 0 else 0.0

    def percentile_us(self, q: float) -> float:
        return percentile_ns(self.latencies_ns, q) / 1e3


def percentile_ns(values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile (as perf_analyzer reports), q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def stable(windows: Sequence[Window], fraction: float = STABILITY_FRACTION) -> bool:
    """perf_analyzer's rule: the last 3 windows' throughput and p99 are within +-fraction
    of their mean (max/min ratio check on both)."""
    if len(windows) < STABILITY_WINDOWS:
        return False
    last = windows[-STABILITY_WINDOWS:]
    for values in (
        [w.throughput for w in last],
        [w.percentile_us(99) for w in last],
    ):
        low, high = min(values), max(values)
        if not low > 0 or math.isnan(high):
            return False
        mean = sum(values) / len(values)
        if (high - low) / mean > 2 * fraction:
            return False
    return True


@dataclasses.dataclass
class LevelResult:
    """One load level (a concurrency or a request rate), aggregated over its last windows."""

    target: str
    workload: str
    protocol: str
    concurrency: int
    request_rate: float
    rows_per_request: int
    throughput: float  # requests/s
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: float
    requests: int
    errors: dict[str, int]
    stable: bool
    windows: int
    client_send_us: float = 0.0
    server_queue_us: float = 0.0
    server_compute_us: float = 0.0
    batch_size_mean: float = 0.0
    server_cpu_us_per_request: float = 0.0
    gateway_cpu_us_per_request: float = 0.0
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def inferences_per_second(self) -> float:
        return self.throughput * self.rows_per_request

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def aggregate(
    windows: Sequence[Window],
    *,
    target: str,
    workload: str,
    protocol: str,
    concurrency: int,
    request_rate: float,
    rows_per_request: int,
    is_stable: bool,
) -> LevelResult:
    """Merge the last (up to 3) windows into one result, as perf_analyzer reports a level."""
    used = list(windows[-STABILITY_WINDOWS:])
    latencies = [v for w in used for v in w.latencies_ns]
    seconds = sum(w.seconds for w in used)
    errors: dict[str, int] = {}
    for w in used:
        for key, count in w.errors.items():
            errors[key] = errors.get(key, 0) + count
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return percentile_ns(ordered, q) / 1e3

    return LevelResult(
        target=target,
        workload=workload,
        protocol=protocol,
        concurrency=concurrency,
        request_rate=request_rate,
        rows_per_request=rows_per_request,
        throughput=len(latencies) / seconds if seconds else 0.0,
        p50_us=pct(50),
        p90_us=pct(90),
        p95_us=pct(95),
        p99_us=pct(99),
        avg_us=(sum(latencies) / len(latencies) / 1e3) if latencies else math.nan,
        requests=len(latencies),
        errors=errors,
        stable=is_stable,
        windows=len(windows),
    )


@dataclasses.dataclass
class SuiteResults:
    """Everything one `tfgate bench suite` run measured (results.json); docs.py renders it."""

    levels: list[LevelResult] = dataclasses.field(default_factory=list)
    inprocess: list[dict] = dataclasses.field(default_factory=list)
    # The large workload's in-process limit again just before and just after each repeat's
    # large levels, tagged with the repeat: the host's speed drifts over a 20-minute run, so
    # the large ratios pair each repeat with the mean of the limits measured around it.
    inprocess_large: list[dict] = dataclasses.field(default_factory=list)
    codec: dict = dataclasses.field(default_factory=dict)
    ipc: dict = dataclasses.field(default_factory=dict)
    machine: dict = dataclasses.field(default_factory=dict)
    bentoml: str = ""  # version, or why it did not run
    started: str = ""
    seconds: float = 0.0
    command: str = ""
    tfgate_args: list[str] = dataclasses.field(default_factory=list)
