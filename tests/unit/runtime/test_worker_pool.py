"""WorkerPool supervision with fake workers: each worker has its own supervisor, so one
worker's slow restart never delays another's restart or hang watchdog."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest

from app.core.errors import Code, ServingError
from app.core.types import ServableId
from app.runtime.pool import LoadSpec, WorkerPool
from app.runtime.worker import PoolOptions
from proto import worker_pb2


class FakeWorker:
    """Only what WorkerPool's supervision touches. start_seconds: how long a restart's
    first ping takes, standing in for a slow process start plus model reloads."""

    def __init__(self, index: int, start_seconds: float = 0.0) -> None:
        self.index = index
        self.start_seconds = start_seconds
        self.alive = True
        self.servables: set[ServableId] = set()
        self.restoring: set[ServableId] = set()
        self.restarts = 0
        self.last_rss_bytes = 0
        self.exited = asyncio.Event()
        self.started_at: list[float] = []
        self.killed_at: list[float] = []
        self.run_started: float | None = None
        self.pings_done = 0

    def start(self) -> None:
        self.alive = True
        self.exited = asyncio.Event()
        self.started_at.append(time.monotonic())

    async def call(self, request, written=None, rows=0):  # type: ignore[no-untyped-def]
        if request.WhichOneof("kind") == "ping":
            if self.restarts:
                await asyncio.sleep(self.start_seconds)
            self.pings_done += 1
        return worker_pb2.WorkerReply(), {}

    def die(self) -> None:
        self.alive = False
        self.exited.set()

    def kill(self) -> None:
        self.killed_at.append(time.monotonic())
        self.run_started = None
        self.die()

    async def reap(self) -> None:
        return None

    async def stop(self) -> None:
        self.die()

    def oldest_run_age_seconds(self, now: float) -> float:
        return 0.0 if self.run_started is None else now - self.run_started


def make_pool(workers: list[FakeWorker], watchdog_seconds: float = 120.0) -> WorkerPool:
    options = PoolOptions(
        num_workers=len(workers), watchdog_seconds=watchdog_seconds, restart_backoff_seconds=0.01
    )
    pool = WorkerPool(options)
    pool.workers = workers  # type: ignore[assignment]
    return pool


async def wait_until(condition, timeout_seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_slow_restart_does_not_delay_another_workers_restart(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("app.runtime.pool.ipc.reclaim_stale_segments", lambda: None)
    slow, fast = FakeWorker(0, start_seconds=30.0), FakeWorker(1)
    pool = make_pool([slow, fast])
    await pool.start()
    try:
        slow.die()
        await wait_until(lambda: slow.restarts == 1)  # slow's restart is now under way (30 s)
        fast.die()
        died = time.monotonic()
        await wait_until(lambda: fast.alive and fast.restarts == 1)
        assert fast.started_at[-1] - died < 2.0
        assert slow.pings_done == 1  # slow's restart is still in its 30 s start
    finally:
        await pool.close()


async def test_the_watchdog_runs_while_another_worker_restarts(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("app.runtime.pool.ipc.reclaim_stale_segments", lambda: None)
    slow, hung = FakeWorker(0, start_seconds=30.0), FakeWorker(1)
    pool = make_pool([slow, hung], watchdog_seconds=0.3)
    await pool.start()
    try:
        slow.die()
        await wait_until(lambda: slow.restarts == 1)
        hung_since = hung.run_started = time.monotonic()
        await wait_until(lambda: bool(hung.killed_at), timeout_seconds=3.0)
        assert hung.killed_at[0] - hung_since < 1.5
        await wait_until(lambda: hung.alive and hung.restarts == 1)
    finally:
        await pool.close()


async def test_a_restarted_worker_gets_its_servables_back(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("app.runtime.pool.ipc.reclaim_stale_segments", lambda: None)
    worker = FakeWorker(0)
    pool = make_pool([worker])
    await pool.start()
    try:
        servable = ServableId("m", 1)
        await pool.load(servable, LoadSpec("/models/m/1", ("serve",), False, 1))
        assert worker.servables == {servable}
        worker.die()
        await wait_until(lambda: worker.alive and worker.servables == {servable})
        assert pool.pick_worker(servable) is worker
    finally:
        await pool.close()


async def test_close_cancels_every_supervisor(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("app.runtime.pool.ipc.reclaim_stale_segments", lambda: None)
    workers = [FakeWorker(0), FakeWorker(1, start_seconds=30.0)]
    pool = make_pool(workers)
    await pool.start()
    workers[1].die()
    await wait_until(lambda: workers[1].restarts == 1)
    tasks = list(pool._supervisors)
    assert len(tasks) == 2
    await asyncio.wait_for(pool.close(), 5.0)
    assert all(t.done() for t in tasks)


def test_describe_workers_shows_the_current_batch_and_restarts() -> None:
    """What the dashboard shows of each worker: a real WorkerProcess object (not started),
    with two runs and a load in flight."""
    from app.runtime.worker import WorkerProcess, _Call

    pool = WorkerPool(PoolOptions(num_workers=2))
    worker = pool.workers[0]
    assert isinstance(worker, WorkerProcess)
    assert pool.describe_workers()[0] == {
        "index": 0, "pid": None, "gpu": None, "alive": False, "restarts": 0,
        "batches_in_flight": 0, "rows_in_flight": 0, "oldest_batch_seconds": 0.0,
        "servables": 0, "restoring": 0, "rss_bytes": None,
    }
    now = time.monotonic()
    loop = asyncio.new_event_loop()
    try:
        worker.pending = {
            1: _Call(loop.create_future(), None, rows=8, started=now - 2.0, is_run=True),
            2: _Call(loop.create_future(), None, rows=3, started=now - 0.5, is_run=True),
            3: _Call(loop.create_future(), None, rows=0, started=now - 9.0, is_run=False),
        }
        worker.alive = True
        worker.restarts = 2
        worker.last_rss_bytes = 1 << 20
        worker.servables = {ServableId("m", 1)}
        described = pool.describe_workers()
    finally:
        loop.close()
    first = described[0]
    assert (first["alive"], first["restarts"], first["rss_bytes"]) == (True, 2, 1 << 20)
    assert (first["batches_in_flight"], first["rows_in_flight"]) == (2, 11)
    assert 2.0 <= first["oldest_batch_seconds"] < 3.0  # the oldest run, not the load
    assert first["servables"] == 1
    assert [w["index"] for w in described] == [0, 1]


def _closes_its_pipe_then_exits(reply_write: int, code: int) -> subprocess.Popen[bytes]:
    """A stand-in worker whose reply pipe closes 0.2 s before it exits with `code` (a real
    worker's pipe closes as it exits, a moment before it can be reaped)."""
    script = f"import os, time; os.close({reply_write}); time.sleep(0.2); raise SystemExit({code})"
    return subprocess.Popen([sys.executable, "-c", script], pass_fds=(reply_write,))


@pytest.mark.parametrize("stopping", [False, True], ids=["died", "stopped"])
def test_the_exit_log_names_the_exit_code_even_when_the_pipe_closes_first(
    caplog: pytest.LogCaptureFixture, stopping: bool
) -> None:
    from app.runtime.worker import WorkerProcess, _Call

    async def scenario() -> tuple[Exception | None, bool]:
        worker = WorkerPool(PoolOptions(num_workers=1)).workers[0]
        assert isinstance(worker, WorkerProcess)
        reply_read, reply_write = os.pipe()
        worker.process = _closes_its_pipe_then_exits(reply_write, 3)
        os.close(reply_write)
        worker._reply_fd = reply_read
        os.set_blocking(reply_read, False)
        loop = asyncio.get_running_loop()
        loop.add_reader(reply_read, worker._on_readable)
        worker.alive, worker.stopping = True, stopping
        call = _Call(loop.create_future(), None, rows=1, started=time.monotonic(), is_run=True)
        worker.pending = {1: call}
        await worker.exited.wait()
        failed_fast = worker.process.poll() is None  # callers are not kept waiting for it
        await asyncio.sleep(1.0)
        await worker.reap()
        return call.future.exception(), failed_fast

    with caplog.at_level(logging.INFO, logger="tfgate.worker_pool"):
        error, failed_fast = asyncio.run(scenario())
    assert failed_fast
    assert isinstance(error, ServingError) and error.code is Code.UNAVAILABLE
    assert str(error.message) == "Worker 0 exited while handling the request"
    exits = [r for r in caplog.records if "exited (code" in r.getMessage()]
    assert [r.getMessage() for r in exits] == ["worker 0 exited (code 3) with 1 call(s) in flight"]
    assert exits[0].levelno == (logging.INFO if stopping else logging.ERROR)
