"""Parent side of the worker processes: spawn, supervise, restart, dispatch.

Data path position: batcher -> worker_pool.run() -> [shared memory + pipe] -> workers.loop.
Every call gets a future keyed by request id; a reply resolves it. A worker that exits (its
reply pipe reaches end of stream) fails all of its in-flight futures with UNAVAILABLE at
once and is restarted with the servables it held; one that hangs past the watchdog is
killed, which leads to the same path. All methods run on the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from app.core.errors import Code, ServingError
from app.core.types import ServableId
from app.runtime.worker import PoolOptions, WorkerProcess
from proto import worker_pb2
from workers import ipc

log = logging.getLogger("tfgate.worker_pool")

# Longest a call waits for a restarting worker to reload its servable (beyond that, or
# when no worker is restarting, it fails with UNAVAILABLE at once).
RESTART_WAIT_SECONDS = 60.0
# How often a supervisor checks its worker's oldest batch against the hang watchdog (an exit
# is seen at once, through the worker's exited event).
WATCHDOG_CHECK_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    path: str
    tags: tuple[str, ...]
    enable_warmup: bool
    warmup_iterations: int
    replace: bool = False


@dataclasses.dataclass
class RunOutcome:
    outputs: dict[str, np.ndarray]
    run_seconds: float
    worker_index: int


class WorkerPool:
    """All worker processes; every servable is loaded on every live worker."""

    def __init__(self, options: PoolOptions) -> None:
        self.options = options
        gpu_ids: list[str | None] = list(options.gpu_ids) or [None] * options.num_workers
        self.workers = [WorkerProcess(i, options, gpu) for i, gpu in enumerate(gpu_ids)]
        self._load_specs: dict[ServableId, LoadSpec] = {}
        # One supervisor task per worker: a restart (backoff plus model reloads, up to
        # minutes) never delays another worker's watchdog or restart.
        self._supervisors: list[asyncio.Task[None]] = []
        self._closing = False
        # Set whenever a (re)started worker gains a servable; see _worker_for.
        self._changed = asyncio.Event()
        # metrics hooks: on_restart(worker_index); on_run(servable, rows, run_seconds);
        # on_warmup(version_path, warmup_seconds), once per worker that replayed records
        self.on_restart: list[Callable[[int], None]] = []
        self.on_run: list[Callable[[ServableId, int, float], None]] = []
        self.on_warmup: list[Callable[[str, float], None]] = []

    async def start(self) -> None:
        ipc.reclaim_stale_segments()
        for worker in self.workers:
            worker.start()
        await asyncio.gather(*(self._ping(w) for w in self.workers))
        self._supervisors = [
            asyncio.create_task(self._supervise(w), name=f"worker-{w.index}-supervisor")
            for w in self.workers
        ]

    async def close(self) -> None:
        self._closing = True
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors = []
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)

    async def _ping(self, worker: WorkerProcess) -> None:
        reply, _ = await worker.call(worker_pb2.WorkerRequest(ping=worker_pb2.PingRequest()))
        worker.last_rss_bytes = reply.rss_bytes

    # --- servables ---

    async def load(self, servable: ServableId, spec: LoadSpec) -> bytes:
        """Load on every live worker; returns the serialized signature_defs MetaGraphDef."""
        previous_spec = self._load_specs.get(servable)
        self._load_specs[servable] = spec
        live = [w for w in self.workers if w.alive]
        if not live:
            raise ServingError(Code.UNAVAILABLE, "No worker process is running")
        results = await asyncio.gather(
            *(self._load_on(w, servable, spec) for w in live), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            if spec.replace and previous_spec is not None:
                # A failed reload: a worker keeps its loaded copy when the new one fails, so
                # the servable still serves everywhere; unloading it would take it down.
                self._load_specs[servable] = previous_spec
            else:
                self._load_specs.pop(servable, None)
                await self.unload(servable)
            raise errors[0]
        return results[0]  # type: ignore[return-value]

    async def _load_on(self, worker: WorkerProcess, servable: ServableId, spec: LoadSpec) -> bytes:
        request = worker_pb2.WorkerRequest(
            load=worker_pb2.LoadRequest(
                model=servable.model,
                version=servable.version,
                path=spec.path,
                tags=spec.tags,
                enable_warmup=spec.enable_warmup,
                warmup_iterations=spec.warmup_iterations,
                replace=spec.replace,
            )
        )
        reply, _ = await worker.call(request)
        if reply.code:
            raise ServingError(Code(reply.code), reply.message)
        worker.servables.add(servable)
        if reply.warmup_records:
            for callback in self.on_warmup:
                callback(spec.path, reply.warmup_seconds)
        return reply.signature_defs

    async def unload(self, servable: ServableId) -> None:
        self._load_specs.pop(servable, None)
        calls = []
        for worker in self.workers:
            if servable in worker.servables:
                worker.servables.discard(servable)
                request = worker_pb2.WorkerRequest(
                    unload=worker_pb2.UnloadRequest(model=servable.model, version=servable.version)
                )
                calls.append(worker.call(request))
        await asyncio.gather(*calls, return_exceptions=True)

    def rss_by_worker(self) -> list[tuple[int, int]]:
        """(worker index, resident bytes from its last reply that carried it), live workers."""
        return [(w.index, w.last_rss_bytes) for w in self.workers if w.alive]

    def describe_workers(self) -> list[dict[str, object]]:
        """Each worker process as the dashboard shows it: alive, restarts, what it runs now
        (batches in flight, their rows, the oldest one's age), servables held, resident
        memory from its last reply. Read only."""
        return [w.describe(time.monotonic()) for w in self.workers]

    # --- inference ---

    def pick_worker(self, servable: ServableId) -> WorkerProcess:
        best: WorkerProcess | None = None
        for worker in self.workers:
            if (
                worker.alive
                and servable in worker.servables
                and (best is None or worker.in_flight_rows < best.in_flight_rows)
            ):
                best = worker
        if best is None:
            raise ServingError(
                Code.UNAVAILABLE,
                f"No worker process holds servable {servable} (worker restarting); try again",
            )
        return best

    async def _worker_for(self, servable: ServableId) -> WorkerProcess:
        """The least-loaded live worker holding servable; while the only holders are being
        restarted (their models reloading), wait for one instead of failing: only the calls
        that were in flight when a worker died see UNAVAILABLE. Callers bound the wait with
        their deadline; it is also capped here."""
        deadline = time.monotonic() + RESTART_WAIT_SECONDS
        while True:
            try:
                return self.pick_worker(servable)
            except ServingError:
                # A dead worker still listing the servable is about to be restarted.
                restoring = any(
                    servable in w.restoring or (not w.alive and servable in w.servables)
                    for w in self.workers
                )
                if not restoring or self._closing or time.monotonic() > deadline:
                    raise
            self._changed = self._changed if not self._changed.is_set() else asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    async def run(
        self,
        servable: ServableId,
        signature: str,
        parts: Sequence[dict[str, np.ndarray]],
        output_aliases: Sequence[str],
        pad_rows: int = 0,
        inner_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> RunOutcome:
        """Run one batch: the row-wise concatenation of `parts` (plus pad_rows padding; inner
        dims padded to `inner_shapes` for pad_variable_length_inputs)."""
        try:
            worker = self.pick_worker(servable)
        except ServingError:
            worker = await self._worker_for(servable)
        aliases = list(parts[0].keys())
        written = worker.write_inputs(aliases, parts, pad_rows, inner_shapes)
        rows = sum(_rows(p) for p in parts) + pad_rows
        request = worker_pb2.WorkerRequest(
            run=worker_pb2.RunRequest(
                model=servable.model,
                version=servable.version,
                signature=signature,
                inputs=written.refs,
                output_aliases=output_aliases,
            )
        )
        reply, outputs = await worker.call(request, written, rows)
        if reply.code:
            raise ServingError(Code(reply.code), reply.message)
        for callback in self.on_run:
            callback(servable, rows, reply.run_seconds)
        return RunOutcome(outputs, reply.run_seconds, worker.index)

    # --- supervision ---

    async def _supervise(self, worker: WorkerProcess) -> None:
        """This worker's supervisor (cancellable; failures logged and retried after a
        backoff): restarts it as soon as it exits, kills it when a batch hangs."""
        while not self._closing:
            try:
                await self._watch(worker)
                if not self._closing:
                    await self._restart(worker)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervising worker %d failed; retrying", worker.index)
                await asyncio.sleep(self.options.restart_backoff_seconds)

    async def _watch(self, worker: WorkerProcess) -> None:
        """Return once the worker has exited. Every WATCHDOG_CHECK_SECONDS, kill it if one
        batch has run past --worker_watchdog_seconds (its exit then ends the wait)."""
        while worker.alive:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), WATCHDOG_CHECK_SECONDS)
            watchdog_seconds = self.options.watchdog_seconds
            if worker.alive and worker.oldest_run_age_seconds(time.monotonic()) > watchdog_seconds:
                log.error(
                    "worker %d ran one batch for over %.0fs: killing it",
                    worker.index,
                    watchdog_seconds,
                )
                worker.kill()

    async def _restart(self, worker: WorkerProcess) -> None:
        held = [s for s in worker.servables if s in self._load_specs]
        worker.restoring = set(held)
        worker.servables = set()
        try:
            await self._restart_and_reload(worker, held)
        finally:
            worker.restoring = set()
            self._changed.set()

    async def _restart_and_reload(self, worker: WorkerProcess, held: list[ServableId]) -> None:
        await worker.reap()
        worker.restarts += 1
        for callback in self.on_restart:
            callback(worker.index)
        await asyncio.sleep(min(self.options.restart_backoff_seconds * worker.restarts, 30))
        worker.start()
        await self._ping(worker)
        for servable in held:
            spec = self._load_specs.get(servable)
            if spec is None:
                continue
            try:
                await self._load_on(worker, servable, spec)
                self._changed.set()  # requests waiting for this servable may go now
            except ServingError as exc:
                log.error(
                    "reloading %s on restarted worker %d failed: %s",
                    servable,
                    worker.index,
                    exc.message,
                )
        log.info("worker %d restarted with %d servable(s)", worker.index, len(held))


def _rows(inputs: dict[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0
