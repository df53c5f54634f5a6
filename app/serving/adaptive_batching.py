"""Adaptive batch size within max_batch_size: how many rows the batcher puts in the next batch.

Data path position: serving/batcher.py asks `AdaptiveCap.limit()` for a queue's batch size
before it forms a batch, and feeds it what it measures: rows queued and running, the worker's
run time per batch (RunOutcome.run_seconds) and the gateway's own CPU time per completed row.

Why: on a CPU host the gateway (one event loop) and a CPU worker share the cores, and at one
row per request the gateway is usually the slower of the two (decode + encode + HTTP, 100-300 us
per row, against a few us per row of model compute). If one batch takes every queued row, the
gateway has nothing to do while the worker runs it, then the worker nothing while the gateway
answers the burst: they take turns. Cutting the batch at half the rows in the system keeps two
batches going, one in the worker while the gateway answers and decodes the other.

The rule (`adaptive_batch_size`, a pure function):
- batch size = max_batch_size (TF Serving's fixed behaviour) unless every measurement exists
  and the gateway is the bottleneck: the worker runs half the outstanding rows in less time
  than the gateway spends on them (W(half) < half x gateway seconds per row);
- and no other queue on the same workers already holds a batch's worth of rows (at least
  half as many as this one): then the workers alternate between the queues, and the gateway
  answers one queue's batch while a worker runs the other's, with nothing cut (a 50/50 traffic
  split over two versions with 27 and 37 clients must run batches of 27 and 37, not 27, 32
  and 5);
- then half the outstanding rows (rounded up), but at least MIN_ADAPTIVE_ROWS (32), never
  above max_batch_size, snapped down to an allowed_batch_sizes entry when the list is set (so
  padding stays as configured). So it only changes a batch when more than 32 rows are queued
  under a max_batch_size above 32.
The outstanding rows are those the batcher sees (queued plus running); requests still being
read or answered by the gateway are not among them, so when the gateway falls behind the
count reads low. The floor keeps that from feeding on itself (smaller batches, more per-batch
work in the gateway, fewer rows reaching the batcher, smaller batches again).
A worker-bound model (W(half) >= the gateway's time) keeps max_batch_size: bigger batches
amortise its per-batch cost and the gateway waits on it anyway. max_batch_size stays a ceiling
in every case; a smaller batch is always allowed, as in TF Serving.
Applies only to CPU workers (they share the gateway's cores); GPU workers batch as configured,
and --adaptive_batching=false turns it off everywhere. Event-loop only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

# How far back the outstanding-row peak looks: long enough to span a few batch cycles at any
# load, short enough to follow a change in the number of clients within a second.
PEAK_WINDOW_SECONDS = 0.5
# The gateway's CPU per row is re-read at most this often (one clock read per batch otherwise).
GATEWAY_SAMPLE_SECONDS = 0.2
# Weight of the newest sample in the running averages (worker time per batch, gateway CPU per row).
EWMA_WEIGHT = 0.2
# The smallest batch the rule picks. Each batch costs the gateway a fixed amount (IPC
# header, pipe round trip, wake-ups, futures, splitting the outputs) that fewer rows share:
# measured at 16 clients (bench/analysis.md), cutting the ~13-row batches the gateway formed
# by itself down to 8 cost 10-20% more gateway CPU per request and lost throughput, while
# cutting 64 clients' bursts at 32 cost nothing. So the rule never cuts below 32 rows.
MIN_ADAPTIVE_ROWS = 32


def applies(enabled: bool, gpu_ids: Sequence[str]) -> bool:
    """Whether the rule runs: --adaptive_batching and CPU workers only (a worker pinned to a
    GPU does not share the gateway's cores, and its device runs full batches faster)."""
    return enabled and not any(gpu_ids)


def adaptive_batch_size(
    max_batch_size: int,
    outstanding_rows: int,
    worker_seconds_at: float | None,
    gateway_seconds_per_row: float | None,
    allowed_batch_sizes: Sequence[int] = (),
    other_queues_rows: int = 0,
) -> int:
    """Rows for the next batch (1..max_batch_size); see the module docstring for the rule.

    outstanding_rows: the recent peak of rows queued plus running for this queue.
    other_queues_rows: the recent outstanding-row peaks of the batcher's other adaptive queues.
    worker_seconds_at: the worker's estimated run time for a batch of half of them (None: not
    measured yet). gateway_seconds_per_row: the gateway's CPU per completed row (None: not yet).
    """
    half = -(-outstanding_rows // 2)
    if (
        worker_seconds_at is None
        or gateway_seconds_per_row is None
        or half >= max_batch_size
        or worker_seconds_at >= half * gateway_seconds_per_row
        or other_queues_rows >= half
    ):
        return max_batch_size
    size = max(MIN_ADAPTIVE_ROWS, half)
    if allowed_batch_sizes:
        fitting = [s for s in allowed_batch_sizes if s <= size]
        size = fitting[-1] if fitting else allowed_batch_sizes[0]
    return min(size, max_batch_size)


class GatewayCpuMeter:
    """The gateway process's CPU seconds per completed row, a running average over samples of
    at least GATEWAY_SAMPLE_SECONDS of wall time (all threads, all models: the cores are one
    budget). Event-loop only."""

    def __init__(self) -> None:
        self._rows = 0
        self._last_wall = time.monotonic()
        self._last_cpu = time.process_time()
        self.seconds_per_row: float | None = None

    def rows_done(self, rows: int) -> None:
        self._rows += rows
        wall = time.monotonic()
        if wall - self._last_wall < GATEWAY_SAMPLE_SECONDS:
            return
        cpu = time.process_time()
        if self._rows > 0:
            sample = (cpu - self._last_cpu) / self._rows
            self.seconds_per_row = _ewma(self.seconds_per_row, sample)
        self._rows, self._last_wall, self._last_cpu = 0, wall, cpu


class AdaptiveCap:
    """One batching queue's measurements and its current batch size (event-loop only)."""

    def __init__(self, gateway: GatewayCpuMeter) -> None:
        self.gateway = gateway
        self._run_seconds: float | None = None  # running average of worker run time per batch
        self._run_rows: float | None = None  # ... and of the rows in those batches
        self._peak_rows = 0  # the larger of this window's and the previous window's peak
        self._window_peak = 0
        self._window_started = time.monotonic()

    def outstanding(self, rows: int) -> None:
        """Rows queued plus running now (called whenever that grows)."""
        now = time.monotonic()
        if now - self._window_started >= PEAK_WINDOW_SECONDS:
            self._peak_rows = max(self._window_peak, rows)
            self._window_peak, self._window_started = rows, now
        self._window_peak = max(self._window_peak, rows)
        self._peak_rows = max(self._peak_rows, rows)

    def batch_done(self, rows_run: int, run_seconds: float, rows_answered: int) -> None:
        """A batch came back: `rows_run` (with padding) took the worker `run_seconds`."""
        self._run_seconds = _ewma(self._run_seconds, run_seconds)
        self._run_rows = _ewma(self._run_rows, float(rows_run))
        self.gateway.rows_done(rows_answered)

    def worker_seconds_for(self, rows: int) -> float | None:
        """Estimated run time of a batch of `rows`, never an underestimate for a run time that
        grows with rows but not faster than them: the average run scaled up (never down) by
        rows / average rows."""
        if self._run_seconds is None or not self._run_rows:
            return None
        return self._run_seconds * max(1.0, rows / self._run_rows)

    def recent_peak(self) -> int:
        """This queue's outstanding-row peak as other queues see it: 0 once it has had no new
        row for two windows. A peak, not the rows now: when a batch of this queue has just
        come back, its clients have not sent their next requests yet, but they will."""
        if time.monotonic() - self._window_started >= 2 * PEAK_WINDOW_SECONDS:
            return 0
        return self._peak_rows

    def limit(
        self, max_batch_size: int, allowed_batch_sizes: Sequence[int], other_queues_rows: int = 0
    ) -> int:
        peak = self._peak_rows
        if time.monotonic() - self._window_started >= 2 * PEAK_WINDOW_SECONDS:
            peak = self._window_peak  # idle for a while: the old peak no longer holds
        return adaptive_batch_size(
            max_batch_size,
            peak,
            self.worker_seconds_for(-(-peak // 2)),
            self.gateway.seconds_per_row,
            allowed_batch_sizes,
            other_queues_rows,
        )


def _ewma(previous: float | None, sample: float) -> float:
    if previous is None or math.isnan(previous):
        return sample
    return previous + EWMA_WEIGHT * (sample - previous)
