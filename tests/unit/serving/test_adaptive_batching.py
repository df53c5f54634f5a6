"""serving/adaptive_batching.py: the batch-size rule as a table, its measurements, and the batcher
using it (never above max_batch_size; off = TF Serving's fixed behaviour)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.core.types import ServableId
from app.runtime.pool import RunOutcome
from app.serving import adaptive_batching
from app.serving.adaptive_batching import AdaptiveCap, GatewayCpuMeter, adaptive_batch_size
from app.serving.batcher import Batcher
from app.settings.model_config import BatchingParameters
from tests.unit.serving.test_batcher import RecordingPool

SID = ServableId("m", 1)
MS = 1e-3


@pytest.mark.parametrize(
    ("max_batch", "outstanding", "worker_s", "gateway_s_per_row", "allowed", "expected"),
    [
        # nothing measured yet: TF Serving's ceiling
        (64, 64, None, 200e-6, (), 64),
        (64, 64, 1 * MS, None, (), 64),
        # gateway-bound (cnn on CPU: 32 rows run in 1 ms, the gateway needs 6.4 ms): half
        (64, 64, 1 * MS, 200e-6, (), 32),
        (256, 64, 1 * MS, 200e-6, (), 32),
        (64, 63, 1 * MS, 200e-6, (), 32),  # rounded up
        (256, 128, 1 * MS, 200e-6, (), 64),
        (256, 100, 1 * MS, 200e-6, (), 50),
        (64, 20, 0.1 * MS, 200e-6, (), 32),  # never below MIN_ADAPTIVE_ROWS
        (64, 1, 0.1 * MS, 200e-6, (), 32),
        (16, 30, 0.1 * MS, 200e-6, (), 16),  # ... nor above the ceiling
        (64, 0, None, None, (), 64),
        # half of the system is more than the ceiling: the ceiling
        (64, 256, 1 * MS, 200e-6, (), 64),
        (64, 128, 1 * MS, 200e-6, (), 64),
        # worker-bound (a heavy model): bigger batches amortise its per-batch cost
        (64, 64, 10 * MS, 200e-6, (), 64),
        (64, 64, 6.4 * MS, 200e-6, (), 64),  # exactly balanced counts as worker-bound
        # allowed_batch_sizes: snapped down to an allowed size, or the smallest one
        (64, 64, 1 * MS, 200e-6, (8, 16, 64), 16),
        (64, 64, 1 * MS, 200e-6, (32, 64), 32),
        (256, 100, 1 * MS, 200e-6, (8, 16, 48, 256), 48),
        (64, 20, 0.1 * MS, 200e-6, (4, 16, 64), 16),
        (64, 6, 0.1 * MS, 200e-6, (40, 64), 40),
    ],
)
def test_rule(
    max_batch: int,
    outstanding: int,
    worker_s: float | None,
    gateway_s_per_row: float | None,
    allowed: tuple[int, ...],
    expected: int,
) -> None:
    size = adaptive_batch_size(max_batch, outstanding, worker_s, gateway_s_per_row, allowed)
    assert size == expected
    assert 1 <= size <= max_batch


@pytest.mark.parametrize(
    ("enabled", "gpu_ids", "expected"),
    [(True, (), True), (True, ("0",), False), (True, ("0", "1"), False), (False, (), False)],
)
def test_rule_applies_to_cpu_workers_only(
    enabled: bool, gpu_ids: tuple[str, ...], expected: bool
) -> None:
    assert adaptive_batching.applies(enabled, gpu_ids) is expected


def test_worker_estimate_scales_up_never_down() -> None:
    cap = AdaptiveCap(GatewayCpuMeter())
    assert cap.worker_seconds_for(32) is None
    cap.batch_done(16, 2 * MS, 16)
    assert cap.worker_seconds_for(8) == pytest.approx(2 * MS)  # never below the average
    assert cap.worker_seconds_for(32) == pytest.approx(4 * MS)


def test_peak_follows_the_outstanding_rows_and_forgets_old_windows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(adaptive_batching.time, "monotonic", lambda: now[0])
    cap = AdaptiveCap(GatewayCpuMeter())
    cap.gateway.seconds_per_row = 1 * MS
    cap.batch_done(32, 1 * MS, 32)
    for rows in (10, 40, 128, 20):
        cap.outstanding(rows)
    assert cap.limit(256, ()) == 64
    now[0] += adaptive_batching.PEAK_WINDOW_SECONDS  # next window: the last one still counts
    cap.outstanding(80)
    assert cap.limit(256, ()) == 64
    now[0] += adaptive_batching.PEAK_WINDOW_SECONDS  # and then it is gone
    cap.outstanding(80)
    assert cap.limit(256, ()) == 40
    # what other queues see: the peak while rows keep coming, nothing once they stop
    assert cap.recent_peak() == 80
    now[0] += 2 * adaptive_batching.PEAK_WINDOW_SECONDS
    assert cap.recent_peak() == 0


def test_gateway_meter_reads_cpu_per_row_over_a_window(monkeypatch: pytest.MonkeyPatch) -> None:
    wall, cpu = [0.0], [0.0]
    monkeypatch.setattr(adaptive_batching.time, "monotonic", lambda: wall[0])
    monkeypatch.setattr(adaptive_batching.time, "process_time", lambda: cpu[0])
    meter = GatewayCpuMeter()
    cpu[0], wall[0] = 0.01, 0.1
    meter.rows_done(50)  # window not over yet
    assert meter.seconds_per_row is None
    cpu[0], wall[0] = 0.02, 0.3
    meter.rows_done(50)
    assert meter.seconds_per_row == pytest.approx(0.02 / 100)


class _TimedPool(RecordingPool):
    """RecordingPool whose runs report a run time, as the worker's replies do."""

    async def run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        outcome = await super().run(*args, **kwargs)
        return RunOutcome(outcome.outputs, 0.1 * MS, 0)


async def _closed_loop(adaptive: bool, clients: int, seconds: float) -> list[int]:
    """`clients` callers each sending 1-row requests back to back; returns the batch sizes."""
    pool = _TimedPool(delay_seconds=0.002)
    params = BatchingParameters(max_batch_size=64, batch_timeout_micros=1000)
    batcher = Batcher(pool, lambda servable: params, adaptive=adaptive)  # type: ignore[arg-type]
    batcher.start()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def client(i: int) -> None:
        while loop.time() < end:
            x = {"x": np.full((1, 1), i, np.float32)}
            out = await batcher.submit(SID, "s", x, ["y"], None)
            assert out["y"][0, 0] == 2 * i
            # the gateway's own work per request (decode + encode), as CPU time
            sum(range(2000))

    try:
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), 10)
    finally:
        await batcher.close()
    return [sum(rows) for rows, _ in pool.batches]


async def test_batcher_cuts_batches_at_half_the_clients_within_the_ceiling() -> None:
    sizes = await _closed_loop(adaptive=True, clients=64, seconds=0.8)
    assert max(sizes) <= 64
    late = sizes[len(sizes) // 2 :]  # measured by now
    assert max(late) <= 32
    assert np.mean(late) >= 16  # still batching: two batches share the clients


async def test_batcher_without_adaptive_fills_to_max_batch_size() -> None:
    sizes = await _closed_loop(adaptive=False, clients=64, seconds=0.5)
    assert max(sizes) == 64


async def test_task_larger_than_the_adaptive_limit_still_runs() -> None:
    pool = _TimedPool(delay_seconds=0.001)
    params = BatchingParameters(max_batch_size=64, batch_timeout_micros=0)
    batcher = Batcher(pool, lambda servable: params, adaptive=True)  # type: ignore[arg-type]
    batcher.start()
    try:
        # teach the queue a small limit: gateway-bound, few rows outstanding
        await batcher.submit(SID, "s", {"x": np.ones((1, 1), np.float32)}, ["y"], None)
        ((_, queue),) = batcher._queues.items()
        assert queue.cap is not None
        queue.cap.gateway.seconds_per_row = 1e-3
        queue.cap._peak_rows = queue.cap._window_peak = 4
        assert queue.batch_limit() == adaptive_batching.MIN_ADAPTIVE_ROWS
        out = await asyncio.wait_for(
            batcher.submit(SID, "s", {"x": np.ones((40, 1), np.float32)}, ["y"], None), 5
        )
        assert out["y"].shape == (40, 1)
        assert pool.batches[-1] == ([40], 0)
    finally:
        await batcher.close()


@pytest.mark.parametrize(
    ("outstanding", "other_queues_rows", "expected"),
    [
        (64, 0, 32),  # alone: half
        (37, 27, 64),  # another queue's batch alternates with this one's: not cut
        (64, 32, 64),  # exactly half as many elsewhere counts
        (64, 31, 32),  # fewer: this queue still needs two batches of its own
        (59, 5, 32),
    ],
)
def test_rule_with_other_queues(outstanding: int, other_queues_rows: int, expected: int) -> None:
    size = adaptive_batch_size(
        64, outstanding, 1 * MS, 200e-6, other_queues_rows=other_queues_rows
    )
    assert size == expected


async def test_two_queues_alternate_without_cutting_the_larger_one() -> None:
    """Two versions share one worker, 24 clients on one and 40 on the other (a traffic split by
    routing key): the 40 run as one batch, not as 32 + 8, once the rule has its measurements."""
    pool = _TimedPool(delay_seconds=0.002)
    params = BatchingParameters(max_batch_size=64, batch_timeout_micros=0)
    batcher = Batcher(pool, lambda servable: params, adaptive=True)  # type: ignore[arg-type]
    batcher.start()
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.8
    servables = [ServableId("m", 1)] * 24 + [ServableId("m", 2)] * 40

    async def client(i: int) -> None:
        while loop.time() < end:
            x = {"x": np.full((1, 1), i, np.float32)}
            out = await batcher.submit(servables[i], "s", x, ["y"], None)
            assert out["y"][0, 0] == 2 * i
            sum(range(2000))  # the gateway's own work per request

    try:
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(64))), 10)
    finally:
        await batcher.close()
    sizes = [sum(rows) for rows, _ in pool.batches]
    late = sizes[len(sizes) // 2 :]
    assert max(sizes) <= 64
    assert max(late) > adaptive_batching.MIN_ADAPTIVE_ROWS, late
    assert np.mean(late) >= 24, late
