"""Per-arm counters of one live rule: requests, errors, recent latencies, outcomes; and
their summary with confidence intervals and the test against the baseline.

Data path position: traffic/router.py records every request that a rule routed here
(event-loop only, O(1) per request); `summarize` runs when the admin API describes a rule.
"""

from __future__ import annotations

import array
import dataclasses
import math
from typing import Any

from app.traffic import stats

# Latencies kept per arm for p50 / p99 (the most recent ones): bounded memory per arm. A
# power of two: the slot of a request is its count masked.
LATENCY_WINDOW = 2048
LATENCY_SLOT_MASK = LATENCY_WINDOW - 1


@dataclasses.dataclass
class ArmStats:
    """requests, errors and latencies_seconds are updated in place by traffic/router.py's
    write_records() (per routed request); outcomes through the methods below."""

    requests: int = 0
    errors: int = 0
    # A preallocated ring of C doubles, request n in slot n & LATENCY_SLOT_MASK: the deque
    # of float objects it replaced kept every routed request's float alive for 2048 more
    # requests, on the hot path where the gateway's other small objects come and go.
    latencies_seconds: array.array[float] = dataclasses.field(
        default_factory=lambda: array.array("d", bytes(8 * LATENCY_WINDOW))
    )
    conversions: int = 0  # binary outcomes that converted
    conversion_trials: int = 0  # binary outcomes reported
    # real-valued rewards: Welford's running mean and sum of squared deviations
    reward_count: int = 0
    reward_mean: float = 0.0
    reward_m2: float = 0.0

    def add_conversion(self, converted: bool) -> None:
        self.conversion_trials += 1
        self.conversions += int(converted)

    def add_reward(self, reward: float) -> None:
        self.reward_count += 1
        delta = reward - self.reward_mean
        self.reward_mean += delta / self.reward_count
        self.reward_m2 += delta * (reward - self.reward_mean)

    @property
    def reward_variance(self) -> float:
        return self.reward_m2 / (self.reward_count - 1) if self.reward_count > 1 else 0.0

    def recent_latencies_seconds(self) -> list[float]:
        """The latencies of the last LATENCY_WINDOW requests (fewer before there were as many)."""
        return self.latencies_seconds.tolist()[: min(self.requests, LATENCY_WINDOW)]

    def latency_percentiles_ms(self) -> tuple[float | None, float | None]:
        ordered = sorted(self.recent_latencies_seconds())
        p50 = stats.percentile(ordered, 0.50)
        p99 = stats.percentile(ordered, 0.99)
        return (
            None if p50 is None else p50 * 1000.0,
            None if p99 is None else p99 * 1000.0,
        )


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def summarize(arm: ArmStats, baseline: ArmStats | None) -> dict[str, Any]:
    """The admin API's per-arm `stats`; `baseline` None for the baseline itself (its
    p_value is null). Conversions are summarised when any were reported, else rewards."""
    p50, p99 = arm.latency_percentiles_ms()
    summary: dict[str, Any] = {
        "requests": arm.requests,
        "errors": arm.errors,
        "error_rate": _round(arm.errors / arm.requests) if arm.requests else None,
        "latency_p50_ms": _round(p50, 3),
        "latency_p99_ms": _round(p99, 3),
        "outcomes": arm.conversion_trials + arm.reward_count,
        "conversions": arm.conversions,
        "conversion_rate": None,
        "mean_reward": None,
        "ci_low": None,
        "ci_high": None,
        "test": None,
        "statistic": None,
        "p_value": None,
    }
    if arm.conversion_trials:
        rate = arm.conversions / arm.conversion_trials
        low, high = stats.wilson_interval(arm.conversions, arm.conversion_trials)
        summary.update(conversion_rate=_round(rate), ci_low=_round(low), ci_high=_round(high))
        if baseline is not None:
            result = stats.two_proportion_z_test(
                baseline.conversions, baseline.conversion_trials,
                arm.conversions, arm.conversion_trials,
            )
            summary["test"] = "two_proportion_z"
            if result is not None:
                summary.update(statistic=_round(result[0]), p_value=_round(result[1], 9))
    elif arm.reward_count:
        summary["mean_reward"] = _round(arm.reward_mean)
        interval = stats.mean_interval(arm.reward_mean, arm.reward_variance, arm.reward_count)
        if interval is not None:
            summary.update(ci_low=_round(interval[0]), ci_high=_round(interval[1]))
        if baseline is not None:
            result = stats.welch_t_test(
                baseline.reward_mean, baseline.reward_variance, baseline.reward_count,
                arm.reward_mean, arm.reward_variance, arm.reward_count,
            )
            summary["test"] = "welch_t"
            if result is not None:
                summary.update(statistic=_round(result[0]), p_value=_round(result[2], 9))
    return summary
