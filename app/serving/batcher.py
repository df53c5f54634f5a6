"""Server-side dynamic batching with TF Serving's BatchingParameters.

Data path position: serving/service.py -> batcher.submit() -> worker_pool.run() -> workers.
One queue per (servable, signature, requested outputs, input dtypes and inner shapes), so
only tensors that can be concatenated row-wise share a batch. A single dispatcher task
forms a batch when a worker slot is free and the queue is full (max_batch_size rows) or its
oldest task has waited batch_timeout_micros; batches therefore grow while workers are busy.
Ragged inner dims are padded (pad_variable_length_inputs) by ipc.put_tensors, as TF
Serving pads them: at the end of each dim, with each request's own first value.
With adaptive batching (CPU workers, serving/adaptive_batching.py) a queue counts as full, and
a batch stops, at the size the measurements choose within max_batch_size instead of at it.
Guarantees: no batch exceeds max_batch_size (execution_batch_size with splitting); rows, not
requests, are counted; a full queue answers RESOURCE_EXHAUSTED at
once; a task whose deadline passed is dropped before it runs; if a batch of several tasks
fails, each task is re-run alone so one bad request never fails the others.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from app.core.errors import Code, ServingError
from app.core.types import ServableId, row_count
from app.runtime.pool import RunOutcome, WorkerPool
from app.serving.adaptive_batching import AdaptiveCap, GatewayCpuMeter
from app.settings.model_config import BatchingParameters

log = logging.getLogger("tfgate.batcher")

# Batches a worker may hold at once. One: the next batch is formed only when the worker
# is free, so it holds everything that queued meanwhile. Measured on 2 cores (dnn, 64
# clients): depth 1 gave ~4.3k req/s at ~200 us gateway CPU per request, depth 2 ~3.1k at
# ~225 us, because smaller batches cost more pipe wake-ups and per-batch work per request;
# the worker's idle gap between batches (one pipe round trip) is far shorter than a batch.
PIPELINE_DEPTH_PER_WORKER = 1
# Empty queues are kept for reuse (a queue per request shape would churn at concurrency 1);
# past this many, empty ones are dropped.
MAX_IDLE_QUEUES = 256


@dataclasses.dataclass(eq=False)
class _Task:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    deadline: float | None
    enqueued_at: float  # loop.time(): batch timeouts are scheduled on the loop's clock
    # perf_counter() for the queuing_latency metric: uvloop's loop.time() is cached per
    # iteration in whole milliseconds, so most queue waits would read as 0.
    enqueued_perf: float


@dataclasses.dataclass(eq=False)
class _Queue:
    servable: ServableId
    signature: str
    output_aliases: tuple[str, ...]
    params: BatchingParameters
    tasks: collections.deque[_Task] = dataclasses.field(default_factory=collections.deque)
    rows: int = 0
    running_rows: int = 0  # rows of this queue's batches in a worker now
    cap: AdaptiveCap | None = None  # None: batches fill up to execution_batch_size

    def outstanding_rows(self) -> int:
        return self.rows + self.running_rows

    def batch_limit(self, adaptive_peaks: int = 0) -> int:
        """Rows the next batch may take (and at which the queue counts as full).
        `adaptive_peaks`: the recent peaks of every adaptive queue, this one included."""
        ceiling = self.params.execution_batch_size
        if self.cap is None:
            return ceiling
        others = max(0, adaptive_peaks - self.cap.recent_peak())
        return min(ceiling, self.cap.limit(ceiling, self.params.allowed_batch_sizes, others))


BatchObserver = Callable[[ServableId, list[int], int, list[float], str], None]
# (servable, rows per task, padding rows, queueing seconds per task, thread_pool_name), when a
# batch starts


class Batcher:
    """Owns the batching queues; `params_for(servable)` None means batching is off for it."""

    def __init__(
        self,
        pool: WorkerPool,
        params_for: Callable[[ServableId], BatchingParameters | None],
        observers: Sequence[BatchObserver] = (),
        *,
        adaptive: bool = False,
    ) -> None:
        """`adaptive`: choose each queue's batch size within max_batch_size from measurements
        (serving/adaptive_batching.py); main.py sets it for CPU workers unless
        --adaptive_batching=false. Off, batches fill up to max_batch_size as in TF Serving."""
        self.pool = pool
        self.params_for = params_for
        self.observers = list(observers)
        self._queues: dict[tuple, _Queue] = {}
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._gateway_cpu = GatewayCpuMeter() if adaptive else None

    def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="batcher")

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        for queue in self._queues.values():
            for task in queue.tasks:
                if not task.future.done():
                    task.future.set_exception(
                        ServingError(Code.UNAVAILABLE, "Server is shutting down")
                    )
        self._queues.clear()

    # --- submit (request side) ---

    async def submit(
        self,
        servable: ServableId,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_aliases: Sequence[str],
        deadline: float | None,
    ) -> dict[str, np.ndarray]:
        params = self.params_for(servable)
        rows = batch_rows(inputs)
        if params is None or rows is None:
            # Not batchable (batching off, scalar inputs, or inputs disagree on dim 0):
            # run as its own session call, as TF Serving does without batching.
            outcome = await self._run_alone(servable, signature, inputs, output_aliases, deadline)
            return outcome.outputs
        if rows > params.max_batch_size:  # input_batch_size_limit, splitting or not
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"Task size {rows} is larger than maximum input batch size "
                f"{params.max_batch_size}",
            )
        if rows > params.execution_batch_size:  # only with enable_large_batch_splitting
            return await self._submit_split(
                servable, signature, inputs, output_aliases, deadline, params, rows
            )
        return await self._enqueue(
            servable, signature, inputs, output_aliases, deadline, params, rows
        )

    async def _submit_split(
        self,
        servable: ServableId,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_aliases: Sequence[str],
        deadline: float | None,
        params: BatchingParameters,
        rows: int,
    ) -> dict[str, np.ndarray]:
        size = params.execution_batch_size
        pieces = await asyncio.gather(
            *(
                self._enqueue(
                    servable,
                    signature,
                    {k: v[start : start + size] for k, v in inputs.items()},
                    output_aliases,
                    deadline,
                    params,
                    min(size, rows - start),
                )
                for start in range(0, rows, size)
            )
        )
        return {alias: np.concatenate([p[alias] for p in pieces]) for alias in pieces[0]}

    async def _enqueue(
        self,
        servable: ServableId,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_aliases: Sequence[str],
        deadline: float | None,
        params: BatchingParameters,
        rows: int,
    ) -> dict[str, np.ndarray]:
        key = (
            servable,
            signature,
            tuple(output_aliases),
            _layout(inputs, params.pad_variable_length_inputs),
        )
        queue = self._queues.get(key)
        if queue is None:
            if len(self._queues) > MAX_IDLE_QUEUES:
                self._queues = {k: q for k, q in self._queues.items() if q.tasks}
            queue = self._queues[key] = _Queue(servable, signature, tuple(output_aliases), params)
            if self._gateway_cpu is not None:
                queue.cap = AdaptiveCap(self._gateway_cpu)
        if -(-(queue.rows + rows) // params.execution_batch_size) > params.max_enqueued_batches:
            raise ServingError(
                Code.RESOURCE_EXHAUSTED,
                "The batch scheduling queue to which this task was submitted is full",
            )
        loop = asyncio.get_running_loop()
        task = _Task(
            inputs, rows, loop.create_future(), deadline, loop.time(), time.perf_counter()
        )
        queue.tasks.append(task)
        queue.rows += rows
        if queue.cap is not None:
            queue.cap.outstanding(queue.outstanding_rows())
        self._wake.set()
        if deadline is None:
            return await task.future
        # One timer per task (cheaper than wait_for's extra task): on expiry the caller gets
        # DEADLINE_EXCEEDED at once; a queued task is then skipped by the dispatcher, and a
        # running one's result is dropped.
        timer = loop.call_at(deadline, _expire, task.future)
        try:
            return await task.future
        finally:
            timer.cancel()

    async def _run_alone(
        self,
        servable: ServableId,
        signature: str,
        inputs: dict[str, np.ndarray],
        output_aliases: Sequence[str],
        deadline: float | None,
    ) -> RunOutcome:
        run = self.pool.run(servable, signature, [inputs], output_aliases)
        if deadline is None:
            return await run
        timeout = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(run, max(timeout, 0))
        except TimeoutError:
            raise deadline_exceeded() from None

    # --- dispatch (batch side) ---

    def _slots(self) -> int:
        live = sum(1 for w in self.pool.workers if w.alive) or 1
        return live * PIPELINE_DEPTH_PER_WORKER

    async def _dispatch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                wait_seconds = self._dispatch_ready(loop.time())
                self._wake.clear()
                if wait_seconds is None:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch dispatch failed; continuing")
                await asyncio.sleep(0.01)

    def _dispatch_ready(self, now: float) -> float | None:
        """Start every batch that is ready while slots are free; return how long until the
        next queue's timeout expires (None: nothing is waiting on a timeout)."""
        next_wait: float | None = None
        while self._in_flight < self._slots():
            best: _Queue | None = None
            adaptive_peaks = self._adaptive_peaks()
            for queue in self._queues.values():
                if not queue.tasks:
                    continue
                oldest = queue.tasks[0].enqueued_at
                timeout = queue.params.batch_timeout_micros / 1e6
                full = queue.rows >= queue.batch_limit(adaptive_peaks)
                if full or now - oldest >= timeout:
                    if best is None or oldest < best.tasks[0].enqueued_at:
                        best = queue
                else:
                    remaining = timeout - (now - oldest)
                    next_wait = remaining if next_wait is None else min(next_wait, remaining)
            if best is None:
                return next_wait
            self._start_batch(best, now, adaptive_peaks)
        return None  # no free slot: a finishing batch sets _wake

    def _adaptive_peaks(self) -> int:
        """The sum of the adaptive queues' recent outstanding-row peaks (they share the
        workers: serving/adaptive_batching.py's rule looks at the other queues' share)."""
        if self._gateway_cpu is None:
            return 0
        return sum(q.cap.recent_peak() for q in self._queues.values() if q.cap is not None)

    def _start_batch(self, queue: _Queue, now: float, adaptive_peaks: int = 0) -> None:
        limit = queue.batch_limit(adaptive_peaks)
        tasks: list[_Task] = []
        rows = 0
        # The first task always goes (it fits execution_batch_size: submit() split it); an
        # adaptive limit below its rows must not leave a full queue that never starts.
        while queue.tasks and (rows == 0 or rows + queue.tasks[0].rows <= limit):
            task = queue.tasks.popleft()
            queue.rows -= task.rows
            if task.future.done():
                continue  # the caller gave up (cancelled)
            if task.deadline is not None and task.deadline <= now:
                task.future.set_exception(deadline_exceeded())
                continue
            tasks.append(task)
            rows += task.rows
        if not tasks:
            return
        self._in_flight += 1
        queue.running_rows += rows
        running = asyncio.create_task(self._execute(queue, tasks, rows))
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    async def _execute(self, queue: _Queue, tasks: list[_Task], rows: int) -> None:
        try:
            pad_rows = padding_for(rows, queue.params.allowed_batch_sizes)
            dispatched = time.perf_counter()
            for observer in self.observers:
                observer(
                    queue.servable,
                    [t.rows for t in tasks],
                    pad_rows,
                    [dispatched - t.enqueued_perf for t in tasks],
                    queue.params.thread_pool_name,
                )
            parts = [t.inputs for t in tasks]
            try:
                pad = queue.params.pad_variable_length_inputs and len(parts) > 1
                inner = padded_inner_shapes(parts) if pad else {}
                outcome = await self.pool.run(
                    queue.servable,
                    queue.signature,
                    parts,
                    queue.output_aliases,
                    pad_rows,
                    inner_shapes=inner or None,
                )
                pieces = split_outputs(outcome.outputs, [t.rows for t in tasks], rows + pad_rows)
                if queue.cap is not None:
                    queue.cap.batch_done(rows + pad_rows, outcome.run_seconds, rows)
            except ServingError as exc:
                if len(tasks) == 1 or exc.code is Code.UNAVAILABLE:
                    _fail(tasks, exc)
                    return
                await self._rerun_alone(queue, tasks)
                return
            for task, piece in zip(tasks, pieces, strict=True):
                if not task.future.done():
                    task.future.set_result(piece)
        except Exception as exc:  # never leave a caller hanging
            log.exception("batch execution failed")
            _fail(tasks, ServingError(Code.INTERNAL, f"Batch execution failed: {exc}"))
        finally:
            self._in_flight -= 1
            queue.running_rows -= rows
            self._wake.set()

    async def _rerun_alone(self, queue: _Queue, tasks: list[_Task]) -> None:
        """A batch failed: isolate the bad request(s) by running each task on its own."""
        for task in tasks:
            if task.future.done():
                continue
            try:
                outcome = await self.pool.run(
                    queue.servable, queue.signature, [task.inputs], queue.output_aliases
                )
                task.future.set_result(outcome.outputs)
            except ServingError as exc:
                if not task.future.done():
                    task.future.set_exception(exc)


def deadline_exceeded() -> ServingError:
    return ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")


def _fail(tasks: list[_Task], error: ServingError) -> None:
    for task in tasks:
        if not task.future.done():
            task.future.set_exception(error)


def batch_rows(inputs: dict[str, np.ndarray]) -> int | None:
    """Rows of a request; None if it cannot be batched (no rows, or not split into rows)."""
    return row_count(inputs) or None


def _layout(inputs: dict[str, np.ndarray], pad_variable_length_inputs: bool) -> tuple:
    """What must agree for requests to share a batch: dtypes and inner shapes, or with
    padding only dtypes and ranks (inner dims are padded up to the batch's largest)."""
    # dtype objects, not dtype.str: equal and hashable alike, and .str builds a string per call.
    if pad_variable_length_inputs:
        return tuple([(alias, a.dtype, a.ndim) for alias, a in sorted(inputs.items())])
    return tuple([(alias, a.dtype, a.shape[1:]) for alias, a in sorted(inputs.items())])


def padded_inner_shapes(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, tuple[int, ...]]:
    """Per input, the largest size of every inner dim over the batch (TF Serving's
    CalculateMaxDimSizes); only inputs whose parts disagree are listed."""
    shapes: dict[str, tuple[int, ...]] = {}
    for alias in parts[0]:
        inner = {p[alias].shape[1:] for p in parts}
        if len(inner) > 1:
            if any(p[alias].size == 0 for p in parts):
                raise ServingError(
                    Code.INVALID_ARGUMENT, "Got empty tensor in batch of non-empty tensors."
                )
            shapes[alias] = tuple(max(dims) for dims in zip(*inner, strict=True))
    return shapes


def _expire(future: asyncio.Future[dict[str, np.ndarray]]) -> None:
    if not future.done():
        future.set_exception(deadline_exceeded())


def padding_for(rows: int, allowed_batch_sizes: Sequence[int]) -> int:
    for size in allowed_batch_sizes:
        if size >= rows:
            return size - rows
    return 0


def split_outputs(
    outputs: dict[str, np.ndarray], row_counts: list[int], total_rows: int
) -> list[dict[str, np.ndarray]]:
    """Hand each task its rows of every output; padding rows at the end are dropped."""
    if len(row_counts) == 1 and total_rows == row_counts[0]:
        return [outputs]
    for alias, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total_rows:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f"Batched output tensor {alias}'s 0th dimension does not equal the sum of "
                "the 0th dimension sizes of the input tensors",
            )
    pieces = []
    start = 0
    for count in row_counts:
        pieces.append({alias: array[start : start + count] for alias, array in outputs.items()})
        start += count
    return pieces
