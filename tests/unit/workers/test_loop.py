"""workers.loop + workers.loader: loads finish on the loader thread and are installed by the
main loop; runs are answered meanwhile; an unload that overtakes its load waits for it;
with --num_load_threads=2 two servables load at once, one servable never twice at once."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from proto import worker_pb2
from workers import example_models, ipc
from workers.loop import INTERNAL, NOT_FOUND, Worker, WorkerOptions


@pytest.fixture
def worker() -> Iterator[Worker]:
    arenas = [
        ipc.Arena.create(ipc.segment_name(os.getpid(), f"looptest-{kind}"), 1 << 20)
        for kind in ("req", "resp")
    ]
    options = WorkerOptions(
        index=0, owner_pid=os.getpid(), request_fd=-1, reply_fd=-1,
        request_arena=arenas[0].name, response_arena=arenas[1].name,
    )
    worker = Worker(options)
    yield worker
    assert worker.loader.close(60)
    for runner in worker.runners.values():
        runner.close()  # type: ignore[attr-defined]
    for arena in (worker.request_arena, worker.response_arena, *arenas):
        arena.close()
    for arena in arenas:
        arena.unlink()


@pytest.fixture(scope="module")
def tiny_version(model_zoo) -> str:  # type: ignore[no-untyped-def]
    return example_models.export("tiny", str(model_zoo.root / "tiny_loop"), exist_ok=True)


def load_request(request_id: int, path: str, version: int = 1) -> worker_pb2.WorkerRequest:
    return worker_pb2.WorkerRequest(
        id=request_id,
        load=worker_pb2.LoadRequest(model="tiny", version=version, path=path, tags=["serve"]),
    )


def finished_replies(worker: Worker, count: int) -> list[worker_pb2.WorkerReply]:
    """What the main loop does on a wake-up, until `count` replies came back."""
    replies: list[worker_pb2.WorkerReply] = []
    while len(replies) < count:
        readable, _, _ = select.select([worker.loader.wake_fd], [], [], 60)
        assert readable, "the loader did not finish in 60 s"
        worker.loader.drain_wakeups()
        replies.extend(worker.install_finished_loads())
    return replies


def test_load_is_answered_when_installed_and_runs_go_on_meanwhile(worker, tiny_version) -> None:  # type: ignore[no-untyped-def]
    assert worker.handle(load_request(1, tiny_version)) is None  # handed to the loader
    # Runs are answered while the load is out (here: the servable is not there yet).
    run = worker_pb2.WorkerRequest(id=2, run=worker_pb2.RunRequest(model="tiny", version=1))
    reply = worker.handle(run)
    assert reply is not None and reply.id == 2 and reply.code == NOT_FOUND
    (loaded,) = finished_replies(worker, 1)
    assert loaded.id == 1 and loaded.code == 0 and loaded.signature_defs
    assert ("tiny", 1) in worker.runners
    # Loading a servable that is already there answers at once, with the same signatures.
    again = worker.handle(load_request(3, tiny_version))
    assert again is not None and again.signature_defs == loaded.signature_defs
    outputs = worker.runners[("tiny", 1)].run(  # type: ignore[attr-defined]
        "serving_default", {"x": np.array([[2.0]], np.float32)}, []
    )
    assert outputs["y"].tolist() == [[3.0]]


def test_unload_that_overtakes_its_load_runs_after_the_install(worker, tiny_version) -> None:  # type: ignore[no-untyped-def]
    assert worker.handle(load_request(1, tiny_version)) is None
    unload = worker_pb2.WorkerRequest(
        id=2, unload=worker_pb2.UnloadRequest(model="tiny", version=1)
    )
    assert worker.handle(unload) is None  # waits for the load
    replies = finished_replies(worker, 2)
    assert [r.id for r in replies] == [1, 2]
    assert [r.code for r in replies] == [0, 0]
    assert worker.runners == {}  # not left installed by the late load


def test_load_after_a_waiting_unload_waits_its_turn(worker, tiny_version) -> None:  # type: ignore[no-untyped-def]
    """load, unload, load of one servable: the second load must not be undone by the
    unload that was sent before it."""
    assert worker.handle(load_request(1, tiny_version)) is None
    unload = worker_pb2.WorkerRequest(
        id=2, unload=worker_pb2.UnloadRequest(model="tiny", version=1)
    )
    assert worker.handle(unload) is None
    assert worker.handle(load_request(3, tiny_version)) is None
    replies = finished_replies(worker, 3)
    assert [r.id for r in replies] == [1, 2, 3]
    assert [r.code for r in replies] == [0, 0, 0]
    assert ("tiny", 1) in worker.runners and not worker.loading and not worker.deferred


def test_failed_load_is_answered_with_its_error(worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert worker.handle(load_request(7, str(tmp_path / "missing"))) is None
    (reply,) = finished_replies(worker, 1)
    assert reply.id == 7 and reply.code not in (0, INTERNAL)
    assert str(tmp_path / "missing") in reply.message
    assert worker.runners == {} and not worker.loading


class FakeRunner:
    def __init__(self, path: str) -> None:
        self.path = path
        self.closed = False

    def signature_defs_bytes(self) -> bytes:
        return self.path.encode()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def two_thread_worker() -> Iterator[Worker]:
    arenas = [
        ipc.Arena.create(ipc.segment_name(os.getpid(), f"looptest2-{kind}"), 1 << 20)
        for kind in ("req", "resp")
    ]
    worker = Worker(WorkerOptions(
        index=0, owner_pid=os.getpid(), request_fd=-1, reply_fd=-1,
        request_arena=arenas[0].name, response_arena=arenas[1].name, load_threads=2,
    ))
    yield worker
    assert worker.loader.close(60)
    for arena in (worker.request_arena, worker.response_arena, *arenas):
        arena.close()
    for arena in arenas:
        arena.unlink()


def test_load_threads_load_two_servables_at_once(two_thread_worker) -> None:  # type: ignore[no-untyped-def]
    """--num_load_threads=2: each fake load waits for the other to start, which only
    succeeds when both run at the same time (one thread would break the barrier)."""
    both_started = threading.Barrier(2, timeout=30)

    def build(request: worker_pb2.LoadRequest) -> FakeRunner:
        both_started.wait()
        return FakeRunner(request.path)

    two_thread_worker.loader._build = build
    first = load_request(1, "/a", version=1)
    second = load_request(2, "/b", version=2)
    assert two_thread_worker.handle(first) is None and two_thread_worker.handle(second) is None
    replies = finished_replies(two_thread_worker, 2)
    assert sorted(r.id for r in replies) == [1, 2]
    assert [r.code for r in replies] == [0, 0]
    assert set(two_thread_worker.runners) == {("tiny", 1), ("tiny", 2)}


def test_second_load_of_one_servable_waits_for_the_first(two_thread_worker) -> None:  # type: ignore[no-untyped-def]
    """A directory replaced while its first load runs: the second load starts only after
    the first is installed, so the newer runner is the one left serving."""
    release_first = threading.Event()
    started: list[str] = []

    def build(request: worker_pb2.LoadRequest) -> FakeRunner:
        started.append(request.path)
        if request.path == "/old":
            assert release_first.wait(30)
        return FakeRunner(request.path)

    two_thread_worker.loader._build = build
    assert two_thread_worker.handle(load_request(1, "/old")) is None
    replace = load_request(2, "/new")
    replace.load.replace = True
    assert two_thread_worker.handle(replace) is None
    assert two_thread_worker.deferred[("tiny", 1)] == [replace]  # not handed to a thread
    release_first.set()
    replies = finished_replies(two_thread_worker, 2)
    assert [r.id for r in replies] == [1, 2]
    assert started == ["/old", "/new"]
    runner = two_thread_worker.runners[("tiny", 1)]
    assert runner.path == "/new"  # type: ignore[attr-defined]
    assert not two_thread_worker.loading and not two_thread_worker.deferred
