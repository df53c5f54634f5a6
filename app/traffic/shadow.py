"""Shadow traffic: copies of requests run on a candidate version after the primary answer
was produced; the client never waits for them.

Data path position: serving/service.py offers a job once a predict answered; one consumer
task runs the jobs one at a time. The queue is bounded: when it is full the copy is dropped
(and counted), so shadow work is the first thing shed under load and never delays an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import ml_dtypes
import numpy as np

from app.traffic.rules import SHADOW_QUEUE_MAX

log = logging.getLogger("tfgate.traffic")

ShadowJob = Callable[[], Awaitable[None]]
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _comparable(array: np.ndarray) -> np.ndarray:
    """bfloat16 (numpy kind "V") compared as the float32 values it holds exactly."""
    return array.astype(np.float32) if array.dtype == _BFLOAT16 else array


def agreement(
    primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray]
) -> tuple[float | None, int, int]:
    """(max abs difference over the numeric outputs both have, rows whose argmax agrees,
    rows compared). The argmax is taken over the last axis of outputs of rank >= 2 (one
    row of class scores per example); a shape mismatch counts as full disagreement."""
    max_diff: float | None = None
    agree = rows = 0
    for alias, a in primary.items():
        b = shadow.get(alias)
        if b is None:
            continue
        a, b = _comparable(a), _comparable(b)
        if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
            continue
        if a.shape != b.shape:
            max_diff = float("inf")
            rows += a.shape[0] if a.ndim else 1
            continue
        if a.size:
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            max_diff = diff if max_diff is None else max(max_diff, diff)
        if a.ndim >= 2 and a.shape[-1] > 1:
            rows += int(np.prod(a.shape[:-1]))
            agree += int(np.sum(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))
    return max_diff, agree, rows


class ShadowDispatcher:
    """A bounded queue of shadow jobs and the one task that runs them. Event-loop only."""

    def __init__(self, max_pending: int = SHADOW_QUEUE_MAX) -> None:
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=max_pending)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failed = 0

    def offer(self, job: ShadowJob, *, max_pending: int | None = None) -> bool:
        """Queue `job` unless the queue holds `max_pending` (or its own bound) already:
        False when it was dropped."""
        full = self._queue.full() or (
            max_pending is not None and self._queue.qsize() >= max_pending
        )
        if full or self._task is None:
            self.dropped += 1
            return False
        self._queue.put_nowait(job)
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="traffic-shadow")

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failed += 1
                log.exception("A shadow request failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
