"""The dashboard's load sampler: rates, quantiles and batch sizes from two metric readings,
a ring that never grows past its window, and a background task that survives failures and
stops when cancelled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.dashboard.sampler import (
    SERIES,
    LoadSampler,
    quantile_micros,
    read_metrics,
    sample_between,
)
from app.ops.metrics import LATENCY_BUCKETS_MICROS, Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def requests(metrics: Metrics, model: str, n: int, micros: float, status: str = "OK") -> None:
    for _ in range(n):
        metrics.request_count.inc(model, status)
        if status == "OK":
            metrics.request_latency.observe(model, "predict", "REST", value=micros)


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ([], 0.5, None),
        ([0, 0, 0], 0.5, None),
        # all in the first bucket [0, 10): the median interpolates to its middle
        ([4, 0, 0], 0.5, 5.0),
        # 2 in [0, 10), 2 in [10, 20): the median is the first bucket's top
        ([2, 2, 0], 0.5, 10.0),
        ([2, 2, 0], 0.75, 15.0),
        # the +Inf bucket answers the highest finite bound
        ([0, 0, 5], 0.99, 20.0),
    ],
)
def test_quantile_from_bucket_counts(counts: list[int], q: float, expected: float | None) -> None:
    assert quantile_micros(counts, [10.0, 20.0], q) == expected


def test_sample_between_two_readings() -> None:
    metrics = Metrics()
    requests(metrics, "m", 10, 1000.0)
    metrics.executed_batch_rows.observe("m", value=4)
    before = read_metrics(metrics)
    requests(metrics, "m", 20, 5000.0)
    requests(metrics, "m", 4, 0.0, status="INVALID_ARGUMENT")
    requests(metrics, "other", 2, 100.0)
    for rows in (8, 8, 16):
        metrics.executed_batch_rows.observe("m", value=rows)
    point = sample_between(before, read_metrics(metrics), 2.0, LATENCY_BUCKETS_MICROS)
    m = point["m"]
    assert m["requests_per_second"] == 12.0  # 24 new requests in 2 s
    assert m["errors_per_second"] == 2.0
    assert m["mean_batch_size"] == pytest.approx(32 / 3, abs=1e-3)
    # only the 20 new 5 ms requests count: both quantiles lie in 5 ms's bucket
    bucket = next(i for i, b in enumerate(LATENCY_BUCKETS_MICROS) if b > 5000.0)
    low, high = LATENCY_BUCKETS_MICROS[bucket - 1] / 1000, LATENCY_BUCKETS_MICROS[bucket] / 1000
    assert low <= m["latency_p50_ms"] <= high
    assert low <= m["latency_p99_ms"] <= high
    assert point["other"]["requests_per_second"] == 1.0
    assert point["other"]["mean_batch_size"] is None  # no model run in the interval


def test_a_counter_that_went_down_counts_from_zero() -> None:
    metrics = Metrics()
    requests(metrics, "m", 10, 1000.0)
    before = read_metrics(metrics)
    metrics.request_count.values.clear()
    requests(metrics, "m", 3, 1000.0)
    point = sample_between(before, read_metrics(metrics), 1.0, LATENCY_BUCKETS_MICROS)
    assert point["m"]["requests_per_second"] == 3.0


def test_ring_keeps_only_the_window_and_columns_line_up() -> None:
    metrics = Metrics()
    clock = Clock()
    sampler = LoadSampler(metrics, interval_seconds=1.0, window_seconds=5.0, clock=clock,
                          wall_clock=clock)
    for i in range(12):
        if i == 8:
            requests(metrics, "late", 1, 10.0)  # a model that appears mid-window
        requests(metrics, "m", i, 10.0)
        sampler.sample()
        clock.now += 1.0
    assert len(sampler.points) == 5 == sampler.capacity
    series = sampler.series()
    assert len(series["t"]) == 5
    assert sorted(series["models"]) == ["late", "m"]
    for model in series["models"].values():
        assert sorted(model) == sorted(SERIES)
        assert all(len(values) == 5 for values in model.values())
    assert series["models"]["m"]["requests_per_second"] == [7.0, 8.0, 9.0, 10.0, 11.0]
    # "late" appeared at i=8 (the window holds i=7..11): no value before it, then its rate
    assert series["models"]["late"]["requests_per_second"] == [None, 1.0, 0.0, 0.0, 0.0]
    newer = sampler.series(since=series["t"][2])
    assert newer["t"] == series["t"][3:]


def test_the_number_of_models_in_a_sample_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.dashboard.sampler.MAX_MODELS", 3)
    metrics = Metrics()
    for i in range(10):
        requests(metrics, f"m{i}", 1, 10.0)
    assert len(read_metrics(metrics)) == 3


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError):
        LoadSampler(Metrics(), interval_seconds=0)
    with pytest.raises(ValueError):
        LoadSampler(Metrics(), interval_seconds=2, window_seconds=1)


async def test_task_logs_failures_keeps_sampling_and_stops_on_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    sampler = LoadSampler(metrics, interval_seconds=0.01, window_seconds=0.05)
    calls = {"n": 0}
    real = sampler.sample

    def flaky() -> None:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("metrics unreadable")
        real()

    sampler.sample = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="tfgate.dashboard"):
        sampler.start()
        for _ in range(200):
            if len(sampler.points) >= 3:
                break
            await asyncio.sleep(0.01)
        await sampler.close()
    assert sampler.failures == 3
    # the same failure three times in a row is logged once
    assert [r.getMessage() for r in caplog.records].count(
        "Dashboard load sample failed: RuntimeError: metrics unreadable") == 1
    assert len(sampler.points) >= 3
    assert len(sampler.points) <= sampler.capacity == 5
    count = calls["n"]
    await asyncio.sleep(0.05)
    assert calls["n"] == count  # stopped
    await sampler.close()  # twice is fine
