"""Arm assignment and the canary's decisions, as pure functions (table-tested).

Data path position: traffic/router.py calls `key_point` (or draws a point) and `arm_in` for
every request that names no version or label and has a rule; `ramp_step`, `effective_weights` and
`rollback_reason` decide the weights it uses; `thompson_weights` is the bandit's.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Sequence

# 2**64: a routing key's hash, read as an unsigned 64-bit integer, maps onto [0, 1).
_HASH_SPAN = float(1 << 64)


def key_point(rule_id: str, routing_key: str) -> float:
    """Where a routing key falls on [0, 1) for one rule: blake2b of (rule id, key), so the
    same key lands on the same point on every replica and after every restart (Python's
    hash() is salted per process and would not)."""
    data = rule_id.encode("utf-8", "surrogatepass") + b"\0"
    data += routing_key.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPAN


def cumulative_weights(weights: Sequence[float]) -> list[float]:
    """Running totals of the weights (arms of weight 0 add nothing): the table `arm_in`
    searches, computed once per weight change rather than per request."""
    return list(itertools.accumulate(max(0.0, w) for w in weights))


def arm_in(point: float, cumulative: Sequence[float]) -> int:
    """The arm whose slice of [0, 1) holds `point`: arms own consecutive slices in their
    order, each as wide as its share of the total weight, so a weight change moves only the
    keys near the boundaries that moved. Arms of weight 0 own nothing."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return 0
    index = bisect.bisect_right(cumulative, point * total)
    if index < len(cumulative):
        return index
    return bisect.bisect_left(cumulative, total)  # rounding at the top: the last arm with weight


def arm_at(point: float, weights: Sequence[float]) -> int:
    """`arm_in` over the weights themselves (outcomes, tests: not the request path)."""
    return arm_in(point, cumulative_weights(weights))


def arm_for_key(rule_id: str, routing_key: str, weights: Sequence[float]) -> int:
    return arm_at(key_point(rule_id, routing_key), weights)


def ramp_step(elapsed_seconds: float, step_seconds: float, steps: int) -> int:
    """The ramp step in force `elapsed_seconds` after the rule started (the last step
    stays)."""
    if elapsed_seconds <= 0:
        return 0
    return min(steps - 1, int(elapsed_seconds // step_seconds))


def ramp_weights(baseline: int, candidate: int, arms: int, candidate_percent: float) -> list[float]:
    """Weights of a two-arm ramp: the candidate's percent, the baseline the rest."""
    weights = [0.0] * arms
    weights[candidate] = candidate_percent
    weights[baseline] = 100.0 - candidate_percent
    return weights


def rollback_reason(
    *,
    baseline_requests: int,
    baseline_errors: int,
    baseline_p99_ms: float | None,
    candidate_requests: int,
    candidate_errors: int,
    candidate_p99_ms: float | None,
    min_requests: int,
    max_error_rate_increase: float | None,
    max_p99_latency_increase_ms: float | None,
) -> str | None:
    """Why the candidate must be rolled back, or None: only once both arms served at least
    `min_requests`, and only when a configured margin is exceeded (strictly)."""
    if baseline_requests < min_requests or candidate_requests < min_requests:
        return None
    if max_error_rate_increase is not None:
        baseline_rate = baseline_errors / baseline_requests
        candidate_rate = candidate_errors / candidate_requests
        if candidate_rate - baseline_rate > max_error_rate_increase:
            return (
                f"error rate {candidate_rate:.4f} exceeds the baseline's {baseline_rate:.4f} "
                f"by more than {max_error_rate_increase:g} (over {candidate_requests} and "
                f"{baseline_requests} requests)"
            )
    if (
        max_p99_latency_increase_ms is not None
        and baseline_p99_ms is not None
        and candidate_p99_ms is not None
        and candidate_p99_ms - baseline_p99_ms > max_p99_latency_increase_ms
    ):
        return (
            f"p99 latency {candidate_p99_ms:.3f} ms exceeds the baseline's "
            f"{baseline_p99_ms:.3f} ms by more than {max_p99_latency_increase_ms:g} ms"
        )
    return None


def thompson_weights(
    successes: Sequence[int], failures: Sequence[int], rng: random.Random, draws: int = 2000
) -> list[float]:
    """Thompson sampling's weights: per arm, how often its Beta(1 + successes, 1 + failures)
    draw was the highest over `draws` rounds, so traffic follows each arm's probability of
    being the best. Every arm keeps a floor of 1% so none starves of evidence."""
    arms = len(successes)
    wins = [0] * arms
    for _ in range(draws):
        best = max(
            range(arms), key=lambda i: rng.betavariate(1 + successes[i], 1 + failures[i])
        )
        wins[best] += 1
    floor = 0.01
    weights = [max(floor, w / draws) for w in wins]
    total = sum(weights)
    return [w / total for w in weights]
