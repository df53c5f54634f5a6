"""Background loading inside a worker process: SavedModel load + warmup off the main loop.

Data path position: workers.loop receives a LoadRequest -> (here, on the loader thread)
SavedModelRunner(...) + warmup replay -> a finished Load waits in `finished` -> the main
loop installs it between two runs and answers the gateway. Loading a version can take
seconds to minutes (variables restored, warmup records replayed); TF Serving loads on its
own threads while the versions already loaded keep serving, and so does this: the main
loop goes on answering runs for every other servable in the meantime.

Only construction happens here. The runner becomes visible to runs (and a replaced runner
is closed) on the main thread, so close() never races with run() (runner.py's rule).
--num_load_threads sets how many loads one worker runs at once (TF Serving's load thread
pool); workers.loop never hands the loader two loads of the same servable at a time, and
the gateway sends one model's versions one after another.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue
import threading
import time

from proto import worker_pb2

log = logging.getLogger("tfgate.worker")


@dataclasses.dataclass
class Load:
    """One LoadRequest and what became of it: a runner, or the exception that stopped it."""

    request: worker_pb2.WorkerRequest
    runner: object | None = None
    signature_defs: bytes = b""
    error: BaseException | None = None
    seconds: float = 0.0
    warmup_records: int = 0  # 0: no warmup file (or warmup off)
    warmup_seconds: float = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return (self.request.load.model, self.request.load.version)


class Loader:
    """`threads` daemon threads that build runners, starting them in request order.

    The main loop waits on `wake_fd` (with its request pipe): one byte is written to it for
    every finished Load, so the loop wakes without polling. With more than one thread,
    loads of different servables finish in any order.
    """

    def __init__(self, session_config: bytes = b"", threads: int = 1) -> None:
        self.session_config = session_config  # serialized ConfigProto; parsed per load
        self.finished: collections.deque[Load] = collections.deque()
        self.wake_fd, self._wake_write_fd = os.pipe()
        os.set_blocking(self.wake_fd, False)
        self._jobs: queue.SimpleQueue[Load | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"tfgate-loader-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, request: worker_pb2.WorkerRequest) -> None:
        self._jobs.put(Load(request))

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def stop(self) -> None:
        """Ask the threads to end once the loads queued before this call are done. The worker
        does not wait for that: it leaves with os._exit while anything is still loading
        (the gateway has already gone)."""
        for _ in self._threads:
            self._jobs.put(None)

    def close(self, timeout_seconds: float) -> bool:
        """stop(), wait for the threads, then close the wake pipe (for tests and tools that
        make many Loaders in one process). False if a thread is still busy: the pipe is then
        left open, so its last write cannot land in a reused descriptor."""
        self.stop()
        deadline = time.monotonic() + timeout_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            return False
        os.close(self.wake_fd)
        os.close(self._wake_write_fd)
        return True

    def _work(self) -> None:
        while True:
            load = self._jobs.get()
            if load is None:
                return
            started = time.monotonic()
            try:
                load.runner = self._build(load.request.load)
                self._warm_up(load)
                load.signature_defs = load.runner.signature_defs_bytes()  # type: ignore[attr-defined]
            except BaseException as exc:  # answered to the gateway, never kills the thread
                load.error = exc
                if load.runner is not None:
                    load.runner.close()  # type: ignore[attr-defined]
                    load.runner = None
            load.seconds = time.monotonic() - started
            self.finished.append(load)
            os.write(self._wake_write_fd, b"\0")

    def _build(self, request: worker_pb2.LoadRequest) -> object:
        from workers.runner import SavedModelRunner  # TF import happens on the first load

        session_config = None
        if self.session_config:
            from tensorflow.core.protobuf import config_pb2

            session_config = config_pb2.ConfigProto.FromString(self.session_config)
        return SavedModelRunner(
            request.path, list(request.tags) or ["serve"], session_config=session_config
        )

    def _warm_up(self, load: Load) -> None:
        """Replay the version's warmup records before it is installed (a failure fails the
        load, and _work closes the runner)."""
        request = load.request.load
        if not request.enable_warmup:
            return
        from workers.warmup import run_warmup

        started = time.monotonic()
        load.warmup_records = run_warmup(
            load.runner,  # type: ignore[arg-type]
            request.path,
            max(1, request.warmup_iterations),
        )
        load.warmup_seconds = time.monotonic() - started
