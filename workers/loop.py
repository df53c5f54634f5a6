"""The worker process's main loop: receive -> load/unload/run -> reply.

Synchronous: runs, unloads and pings are handled one at a time in the order the gateway sent
them, so run replies come back in order and the shared-memory regions free in FIFO order
(ipc.py). Loads are the exception: workers/loader.py builds runners on its own threads
(--num_load_threads) and this loop installs each when it is ready, so a version that takes
minutes to load does not stall the servables already serving. Replies carry the request id;
the gateway matches by id. Any failure is answered with a status; only the gateway closing
the pipe ends the loop.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import resource
import select
import time

from proto import worker_pb2
from workers import ipc
from workers.loader import Load, Loader

log = logging.getLogger("tfgate.worker")

INTERNAL = 13
NOT_FOUND = 5


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    index: int
    owner_pid: int
    request_fd: int
    reply_fd: int
    request_arena: str
    response_arena: str
    session_config: bytes = b""  # serialized tensorflow.ConfigProto; empty: defaults
    load_threads: int = 1


class Worker:
    """Holds the loaded SavedModels of this process and answers WorkerRequests."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.request_arena = ipc.Arena.attach(options.request_arena)
        self.response_arena = ipc.Arena.attach(options.response_arena)
        self.response_allocator = ipc.RingAllocator(
            ipc.ARENA_HEADER_BYTES, self.response_arena.nbytes
        )
        # response_seq -> offsets allocated for that reply, oldest first
        self.response_regions: collections.OrderedDict[int, list[int]] = collections.OrderedDict()
        self.next_response_seq = 1
        self.runners: dict[tuple[str, int], object] = {}
        self.loader = Loader(options.session_config, options.load_threads)
        # (model, version) -> loads handed to the loader and not installed yet
        self.loading: collections.Counter[tuple[str, int]] = collections.Counter()
        # An unload that arrives while its servable is still loading waits for that load, and
        # so does every load or unload of the same servable after it: handled in arrival
        # order once the loads in progress are installed.
        self.deferred: dict[tuple[str, int], list[worker_pb2.WorkerRequest]] = {}

    def handle(self, request: worker_pb2.WorkerRequest) -> worker_pb2.WorkerReply | None:
        """The reply to `request`, or None when it was handed to the loader (its reply comes
        from install_finished_loads())."""
        kind = request.WhichOneof("kind")
        try:
            if kind == "run":
                reply = self.run(request.run)
            elif kind == "load":
                reply = self.load(request)
            elif kind == "unload":
                reply = self.unload(request)
            else:
                reply = worker_pb2.WorkerReply(rss_bytes=rss_bytes())
        except Exception as exc:  # answer every request; never die on a bad one
            reply = error_reply(request, exc)
        if reply is not None:
            reply.id = request.id
        return reply

    def load(self, request: worker_pb2.WorkerRequest) -> worker_pb2.WorkerReply | None:
        load = request.load
        key = (load.model, load.version)
        if key in self.deferred:
            self.deferred[key].append(request)
            return None
        if self.loading[key]:
            # One load of a servable at a time: with several loader threads a second load
            # (a replaced directory) could otherwise finish first and be installed over.
            self.deferred[key] = [request]
            return None
        if key in self.runners and not load.replace:
            runner = self.runners[key]
            return worker_pb2.WorkerReply(
                signature_defs=runner.signature_defs_bytes(),  # type: ignore[attr-defined]
                rss_bytes=rss_bytes(),
            )
        self.loading[key] += 1
        self.loader.submit(request)
        return None

    def install_finished_loads(self) -> list[worker_pb2.WorkerReply]:
        """Make every finished load visible to runs (closing a replaced runner) and return
        the replies: each load's, then those of the requests deferred behind it."""
        replies = []
        while self.loader.finished:
            done = self.loader.finished.popleft()
            try:
                replies.append(self._install(done))
            except Exception as exc:  # answer it; never die on a bad one
                replies.append(error_reply(done.request, exc))
            if not self.loading[done.key]:
                for request in self.deferred.pop(done.key, []):
                    reply = self.handle(request)
                    if reply is not None:
                        replies.append(reply)
        return replies

    def _install(self, done: Load) -> worker_pb2.WorkerReply:
        key = done.key
        self.loading[key] -= 1
        if self.loading[key] <= 0:
            del self.loading[key]
        if done.error is not None:
            reply = error_reply(done.request, done.error)
        else:
            previous = self.runners.get(key)
            self.runners[key] = done.runner
            if previous is not None:
                previous.close()  # type: ignore[attr-defined]
                release_free_memory()
            log.info(
                "loaded %s version %d from %s in %.2fs",
                key[0],
                key[1],
                done.request.load.path,
                done.seconds,
            )
            reply = worker_pb2.WorkerReply(
                signature_defs=done.signature_defs,
                rss_bytes=rss_bytes(),
                warmup_records=done.warmup_records,
                warmup_seconds=done.warmup_seconds,
            )
        reply.id = done.request.id
        return reply

    def unload(self, request: worker_pb2.WorkerRequest) -> worker_pb2.WorkerReply | None:
        unload = request.unload
        key = (unload.model, unload.version)
        if self.loading[key] or key in self.deferred:
            # Unloading now would leave the load in progress to install the servable again.
            self.deferred.setdefault(key, []).append(request)
            return None
        runner = self.runners.pop(key, None)
        if runner is not None:
            runner.close()
            del runner
            gc.collect()
            release_free_memory()
            log.info("unloaded %s version %d", unload.model, unload.version)
        return worker_pb2.WorkerReply(rss_bytes=rss_bytes())

    def run(self, run: worker_pb2.RunRequest) -> worker_pb2.WorkerReply:
        runner = self.runners.get((run.model, run.version))
        if runner is None:
            servable = f"{{name: {run.model} version: {run.version}}}"
            return worker_pb2.WorkerReply(
                code=NOT_FOUND, message=f"Servable not loaded in worker: {servable}"
            )
        inputs = ipc.get_tensors(self.request_arena, run.inputs, copy=False)
        started = time.perf_counter()
        outputs = runner.run(run.signature, inputs, list(run.output_aliases))
        run_seconds = time.perf_counter() - started
        del inputs  # views into the request arena: the gateway reuses the region after the reply
        reply = worker_pb2.WorkerReply(run_seconds=run_seconds)
        self._write_outputs(outputs, reply)
        return reply

    def _write_outputs(self, outputs: dict, reply: worker_pb2.WorkerReply) -> None:
        self._release_consumed_responses()
        written = ipc.put_tensors(
            self.response_arena,
            self.response_allocator,
            outputs.keys(),
            [outputs],
            self.options.owner_pid,
        )
        reply.outputs.extend(written.refs)
        if written.offsets:
            seq = self.next_response_seq
            self.next_response_seq += 1
            self.response_regions[seq] = written.offsets
            reply.response_seq = seq

    def _release_consumed_responses(self) -> None:
        consumed = self.response_arena.read_seq()
        while self.response_regions:
            seq = next(iter(self.response_regions))
            if seq > consumed:
                break
            for offset in self.response_regions.pop(seq):
                self.response_allocator.free(offset)


def error_reply(request: worker_pb2.WorkerRequest, exc: BaseException) -> worker_pb2.WorkerReply:
    """A failure as a status reply: TF's code and text when the error carries them."""
    code = getattr(exc, "code", INTERNAL)
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    if not isinstance(code, int):
        code = INTERNAL
    if code == INTERNAL:
        log.error(
            "request %s (%s) failed",
            request.id,
            request.WhichOneof("kind"),
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    reply = worker_pb2.WorkerReply(code=code, message=message)
    reply.id = request.id
    return reply


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS after an unload."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def serve(options: WorkerOptions) -> int:
    worker = Worker(options)
    log.info("worker %d ready (pid %d)", options.index, os.getpid())
    try:
        _serve_forever(worker, options)
        exit_code = 0
    except Exception:
        log.exception("worker %d: main loop failed", options.index)
        exit_code = 1
    worker.loader.stop()
    log.info("worker %d exiting", options.index)
    if worker.loading:
        # A load is queued or still inside TensorFlow on a loader thread (`loading` counts
        # every load from submit to install); interpreter shutdown would tear TF down under
        # it. Nobody waits for it any more: leave at once.
        logging.shutdown()
        os._exit(exit_code)
    return exit_code


def _serve_forever(worker: Worker, options: WorkerOptions) -> None:
    wake_fd = worker.loader.wake_fd
    while True:
        # 1) Wait for the next request or a finished load.
        readable, _, _ = select.select([options.request_fd, wake_fd], [], [])
        replies: list[worker_pb2.WorkerReply] = []
        # 2) Install finished loads first: a run that follows may be for one of them.
        if wake_fd in readable:
            worker.loader.drain_wakeups()
            replies.extend(worker.install_finished_loads())
        if options.request_fd in readable:
            # End of stream means the gateway is gone or done.
            payload = ipc.recv_frame(options.request_fd)
            if payload is None:
                return
            # 3) Do it (a load only starts here; its reply comes from step 2).
            reply = worker.handle(worker_pb2.WorkerRequest.FromString(payload))
            if reply is not None:
                replies.append(reply)
        # 4) Answer; the gateway matches each reply to its request by id.
        try:
            for reply in replies:
                ipc.send_frame(options.reply_fd, reply.SerializeToString())
        except BrokenPipeError:
            return
