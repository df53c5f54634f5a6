"""workers.loop + workers.loader: loads finish on the loader thread and are installed by the
main loop; runs are answered meanwhile; an unload that overtakes its load waits for it."""

from __future__ import annotations

import os
import select
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
