"""Arm assignment, ramp and rollback decisions, Thompson sampling: pure functions."""

from __future__ import annotations

import random

import pytest

from app.traffic import assign


def test_key_point_is_a_stable_blake2b_digest() -> None:
    # Pinned values: a change here would move every routing key to another arm on upgrade.
    assert assign.key_point("exp1", "user-1") == pytest.approx(0.07525881856021137, abs=0)
    assert assign.key_point("m", "alice") == pytest.approx(0.8669973945765952, abs=0)
    assert assign.key_point("m", "alice") != assign.key_point("other", "alice")


@pytest.mark.parametrize(
    ("point", "weights", "arm"),
    [
        (0.0, [1, 1], 0),
        (0.49, [1, 1], 0),
        (0.5, [1, 1], 1),
        (0.999999, [1, 1], 1),
        (0.1, [0, 1], 1),  # a weight-0 arm owns nothing
        (0.95, [1, 0], 0),
        (0.3, [1, 2, 1], 1),
        (0.8, [1, 2, 1], 2),
        (0.5, [0, 0], 0),  # no weight at all: the first arm
        (1.0, [1, 1, 0], 1),  # rounding at the top: the last arm with weight
        (0.7, [0, 1, 0, 1, 0], 3),
    ],
)
def test_arm_at(point: float, weights: list[float], arm: int) -> None:
    assert assign.arm_at(point, weights) == arm
    assert assign.arm_in(point, assign.cumulative_weights(weights)) == arm


def _arm_by_walking(point: float, weights: list[float]) -> int:
    """The slice rule spelled out arm by arm: the reference the bisect search must match, so
    no routing key moves to another arm when the search changes."""
    total = sum(weights)
    if total <= 0:
        return 0
    running, last = 0.0, 0
    for index, weight in enumerate(weights):
        if weight <= 0:
            continue
        running += weight
        last = index
        if point * total < running:
            return index
    return last


def test_arm_in_matches_the_slice_rule_everywhere() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        weights = [rng.choice([0, 0.5, 1, 3, 33.3, 50]) for _ in range(rng.randint(1, 5))]
        point = rng.choice([rng.random(), 0.0, 1.0 - 1e-16])
        assert assign.arm_at(point, weights) == _arm_by_walking(point, weights), (point, weights)


def test_keys_split_by_weight_and_stay_put() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    arms = [assign.arm_for_key("rule", k, [25, 75]) for k in keys]
    share = arms.count(0) / len(arms)
    assert 0.24 < share < 0.26
    assert arms == [assign.arm_for_key("rule", k, [25, 75]) for k in keys]
    # widening arm 0 to 50% only moves keys from arm 1 to arm 0, never the other way
    wider = [assign.arm_for_key("rule", k, [50, 50]) for k in keys]
    assert all(w == 0 for a, w in zip(arms, wider, strict=True) if a == 0)


@pytest.mark.parametrize(
    ("elapsed", "step_seconds", "steps", "expected"),
    [(-1, 10, 4, 0), (0, 10, 4, 0), (9.99, 10, 4, 0), (10, 10, 4, 1), (35, 10, 4, 3),
     (1e9, 10, 4, 3), (5, 10, 1, 0)],
)
def test_ramp_step(elapsed: float, step_seconds: float, steps: int, expected: int) -> None:
    assert assign.ramp_step(elapsed, step_seconds, steps) == expected


def test_ramp_weights() -> None:
    assert assign.ramp_weights(0, 1, 2, 25.0) == [75.0, 25.0]
    assert assign.ramp_weights(1, 0, 2, 100.0) == [100.0, 0.0]


BASE = {
    "baseline_requests": 100, "baseline_errors": 1, "baseline_p99_ms": 10.0,
    "candidate_requests": 100, "candidate_errors": 1, "candidate_p99_ms": 10.0,
    "min_requests": 50, "max_error_rate_increase": 0.05, "max_p99_latency_increase_ms": 20.0,
}


@pytest.mark.parametrize(
    ("changes", "rolls_back"),
    [
        ({}, False),
        ({"candidate_errors": 6}, False),  # +5 points: not more than the margin
        ({"candidate_errors": 7}, True),
        ({"candidate_errors": 90, "candidate_requests": 49}, False),  # too few requests
        ({"candidate_errors": 90, "baseline_requests": 10, "baseline_errors": 0}, False),
        ({"candidate_p99_ms": 30.0}, False),
        ({"candidate_p99_ms": 30.5}, True),
        ({"candidate_p99_ms": 300.0, "max_p99_latency_increase_ms": None}, False),
        ({"candidate_errors": 90, "max_error_rate_increase": None}, False),
        ({"candidate_p99_ms": None}, False),
    ],
)
def test_rollback_reason(changes: dict, rolls_back: bool) -> None:
    reason = assign.rollback_reason(**{**BASE, **changes})
    assert (reason is not None) == rolls_back


def test_thompson_moves_weight_to_the_better_arm() -> None:
    rng = random.Random(3)
    weights = assign.thompson_weights([30, 60], [70, 40], rng)
    assert sum(weights) == pytest.approx(1.0)
    assert weights[1] > 0.95
    even = assign.thompson_weights([0, 0], [0, 0], random.Random(3))
    assert 0.4 < even[0] < 0.6
    assert min(assign.thompson_weights([0, 500], [500, 0], rng)) >= 0.0099  # the floor
