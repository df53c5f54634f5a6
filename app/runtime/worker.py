"""One worker process as the gateway sees it: spawn, shared-memory arenas, control pipes,
request/reply correlation, exit detection.

Data path position: worker_pool.run() -> WorkerProcess.call() -> [arena + pipe] ->
workers.loop -> reply -> WorkerProcess._on_reply() resolves the call's future. The reply
pipe reaching end of stream means the process exited: every call in flight fails with
UNAVAILABLE at once. Event-loop only (pipes are non-blocking, watched with add_reader).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from app.core.errors import Code, ServingError
from app.core.types import ServableId
from proto import worker_pb2
from workers import ipc

log = logging.getLogger("tfgate.worker_pool")

# How long a worker is given to exit once it is expected to: reap() kills it after that, and
# the exit log waits as long for its code (the reply pipe closes as the worker exits, a moment
# before the process can be reaped, and "code None" told operators nothing).
EXIT_CODE_WAIT_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    num_workers: int = 1
    # One entry per worker: the CUDA_VISIBLE_DEVICES value it is pinned to ("" = CPU only).
    gpu_ids: tuple[str, ...] = ()
    arena_bytes: int = 64 << 20
    # Serialized tensorflow.ConfigProto every session loads with (app/settings/session_bundle.py);
    # empty: the worker's defaults.
    session_config: bytes = b""
    load_threads: int = 1  # --num_load_threads, per worker
    watchdog_seconds: float = 120.0
    restart_backoff_seconds: float = 1.0
    log_level: str = "INFO"


@dataclasses.dataclass
class _Call:
    future: asyncio.Future[tuple[worker_pb2.WorkerReply, dict[str, np.ndarray]]]
    written: ipc.Written | None
    rows: int
    started: float
    is_run: bool


class WorkerProcess:
    """One worker process, its two arenas and its control pipes."""

    def __init__(self, index: int, options: PoolOptions, gpu_id: str | None) -> None:
        self.index = index
        self.options = options
        self.gpu_id = gpu_id
        self.process: subprocess.Popen[bytes] | None = None
        self.servables: set[ServableId] = set()
        # Servables being reloaded after a restart: requests for them wait, not fail.
        self.restoring: set[ServableId] = set()
        self.pending: dict[int, _Call] = {}
        self.in_flight_rows = 0
        self.alive = False
        self.stopping = False
        self.restarts = 0
        self.last_rss_bytes = 0
        self._ids = itertools.count(1)
        self._frames = ipc.FrameBuffer()
        self._request_fd = -1
        self._reply_fd = -1
        self._request_arena: ipc.Arena | None = None
        self._response_arena: ipc.Arena | None = None
        self._allocator: ipc.RingAllocator | None = None
        self._outbox = bytearray()
        self.exited = asyncio.Event()
        self._exit_log: asyncio.Task[None] | None = None  # held: the loop keeps weak refs

    # --- lifecycle ---

    def start(self) -> None:
        owner = os.getpid()
        self._request_arena = ipc.Arena.create(
            ipc.segment_name(owner, f"w{self.index}-req"), self.options.arena_bytes
        )
        self._response_arena = ipc.Arena.create(
            ipc.segment_name(owner, f"w{self.index}-resp"), self.options.arena_bytes
        )
        self._allocator = ipc.RingAllocator(ipc.ARENA_HEADER_BYTES, self.options.arena_bytes)
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        env = dict(os.environ)
        if self.gpu_id is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_id
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cmd = [
            sys.executable,
            "-m",
            "workers",
            "--index",
            str(self.index),
            "--owner-pid",
            str(owner),
            "--request-fd",
            str(request_read),
            "--reply-fd",
            str(reply_write),
            "--request-arena",
            self._request_arena.name,
            "--response-arena",
            self._response_arena.name,
            "--session-config",
            base64.b64encode(self.options.session_config).decode("ascii"),
            "--load-threads",
            str(self.options.load_threads),
            "--log-level",
            self.options.log_level,
        ]
        try:
            self.process = subprocess.Popen(
                cmd, pass_fds=(request_read, reply_write), env=env, stdin=subprocess.DEVNULL
            )
        finally:
            # The child holds its ends now; closing ours makes its exit show as EOF here.
            os.close(request_read)
            os.close(reply_write)
        self._request_fd = request_write
        self._reply_fd = reply_read
        os.set_blocking(self._request_fd, False)
        os.set_blocking(self._reply_fd, False)
        self._frames = ipc.FrameBuffer()
        self._outbox = bytearray()
        self.exited = asyncio.Event()
        self.stopping = False
        asyncio.get_running_loop().add_reader(self._reply_fd, self._on_readable)
        self.alive = True
        log.info("started worker %d (pid %d)", self.index, self.process.pid)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    async def stop(self, timeout_seconds: float = 10.0) -> None:
        """Close the request pipe (the worker's loop ends) and wait; kill if it lingers."""
        if self.process is None:
            return
        self.stopping = True
        if self._request_fd >= 0:
            self._close_request_fd()
        deadline = time.monotonic() + timeout_seconds
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.process.poll() is None:
            self.process.kill()
            await asyncio.sleep(0)
        await self._on_exit_async()

    # --- calls ---

    def call(
        self, request: worker_pb2.WorkerRequest, written: ipc.Written | None = None, rows: int = 0
    ) -> asyncio.Future[tuple[worker_pb2.WorkerReply, dict[str, np.ndarray]]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[worker_pb2.WorkerReply, dict[str, np.ndarray]]] = (
            loop.create_future()
        )
        if not self.alive:
            self._release(written)
            future.set_exception(self._unavailable())
            return future
        request.id = next(self._ids)
        self.pending[request.id] = _Call(
            future, written, rows, time.monotonic(), request.HasField("run")
        )
        self.in_flight_rows += rows
        self._send(ipc.frame(request.SerializeToString()))
        return future

    def write_inputs(
        self,
        aliases: Sequence[str],
        parts: Sequence[dict[str, np.ndarray]],
        pad_rows: int = 0,
        inner_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> ipc.Written:
        assert self._request_arena is not None and self._allocator is not None
        return ipc.put_tensors(
            self._request_arena,
            self._allocator,
            aliases,
            parts,
            os.getpid(),
            pad_rows,
            inner_shapes,
        )

    def describe(self, now: float) -> dict[str, object]:
        """What the dashboard shows of this worker (see WorkerPool.describe_workers)."""
        runs = [c for c in self.pending.values() if c.is_run]
        return {
            "index": self.index,
            "pid": self.process.pid if self.process is not None and self.alive else None,
            "gpu": self.gpu_id or None,
            "alive": self.alive,
            "restarts": self.restarts,
            "batches_in_flight": len(runs),
            "rows_in_flight": sum(c.rows for c in runs),
            "oldest_batch_seconds": round(self.oldest_run_age_seconds(now), 3),
            "servables": len(self.servables),
            "restoring": len(self.restoring),
            "rss_bytes": self.last_rss_bytes if self.alive else None,
        }

    def oldest_run_age_seconds(self, now: float) -> float:
        ages = [now - c.started for c in self.pending.values() if c.is_run]
        return max(ages, default=0.0)

    def _send(self, data: bytes) -> None:
        if self._outbox:
            self._outbox += data
            return
        try:
            written = os.write(self._request_fd, data)
        except BlockingIOError:
            written = 0
        except (BrokenPipeError, OSError):
            return  # the reader side sees EOF and fails the call
        if written < len(data):
            self._outbox += data[written:]
            asyncio.get_running_loop().add_writer(self._request_fd, self._flush)

    def _flush(self) -> None:
        try:
            written = os.write(self._request_fd, self._outbox)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._outbox)
        del self._outbox[:written]
        if not self._outbox:
            asyncio.get_running_loop().remove_writer(self._request_fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._reply_fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_exit()
            return
        for payload in self._frames.feed(data):
            self._on_reply(worker_pb2.WorkerReply.FromString(payload))

    def _on_reply(self, reply: worker_pb2.WorkerReply) -> None:
        call = self.pending.pop(reply.id, None)
        outputs: dict[str, np.ndarray] = {}
        assert self._response_arena is not None
        if reply.outputs:
            try:
                outputs = ipc.get_tensors(self._response_arena, reply.outputs, copy=True)
            finally:
                if reply.response_seq:
                    self._response_arena.write_seq(reply.response_seq)
        if reply.rss_bytes:
            self.last_rss_bytes = reply.rss_bytes
        if call is None:
            return
        self.in_flight_rows -= call.rows
        self._release(call.written)
        if not call.future.done():
            call.future.set_result((reply, outputs))

    def _release(self, written: ipc.Written | None) -> None:
        if written is None:
            return
        if self._allocator is not None:
            for offset in written.offsets:
                self._allocator.free(offset)
        for name in written.segments:  # normally unlinked by the reader already
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(ipc.SHM_DIR, name))

    def _unavailable(self) -> ServingError:
        return ServingError(
            Code.UNAVAILABLE, f"Worker {self.index} is not running (restarting); try again"
        )

    def _on_exit(self) -> None:
        """The worker's reply pipe closed: it exited or was killed."""
        if not self.alive:
            return
        self.alive = False
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._reply_fd)
        if self._outbox:
            loop.remove_writer(self._request_fd)
        exit_code = self.process.poll() if self.process else None
        if exit_code is None and self.process is not None:
            self._exit_log = loop.create_task(
                self._log_exit_once_reaped(self.process, self.stopping, len(self.pending))
            )
        else:
            self._log_exit(exit_code, self.stopping, len(self.pending))
        known = f" (exit code {exit_code})" if exit_code is not None else ""
        error = ServingError(
            Code.UNAVAILABLE, f"Worker {self.index} exited while handling the request{known}"
        )
        for call in self.pending.values():
            self._release(call.written)
            if not call.future.done():
                call.future.set_exception(error)
        self.pending.clear()
        self.in_flight_rows = 0
        self.exited.set()

    def _log_exit(self, exit_code: int | None, stopping: bool, in_flight: int) -> None:
        log.log(
            logging.INFO if stopping else logging.ERROR,
            "worker %d exited (code %s) with %d call(s) in flight",
            self.index,
            exit_code,
            in_flight,
        )

    async def _log_exit_once_reaped(
        self, process: subprocess.Popen[bytes], stopping: bool, in_flight: int
    ) -> None:
        """The exit log line, with the code once the process can be reaped (bounded wait)."""
        try:
            self._log_exit(
                await _exit_code_within(process, EXIT_CODE_WAIT_SECONDS), stopping, in_flight
            )
        except Exception:
            log.exception("logging worker %d's exit failed", self.index)

    async def _on_exit_async(self) -> None:
        self._on_exit()
        await self.reap()

    async def reap(self) -> None:
        """Wait for the process, close fds and unlink the arenas (memory reclaimed)."""
        if self.process is not None:
            if await _exit_code_within(self.process, EXIT_CODE_WAIT_SECONDS) is None:
                self.process.kill()
                await asyncio.sleep(0.01)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self._request_fd >= 0:
            self._close_request_fd()
        if self._reply_fd >= 0:
            os.close(self._reply_fd)
            self._reply_fd = -1
        for arena in (self._request_arena, self._response_arena):
            if arena is not None:
                arena.close()
                arena.unlink()
        self._request_arena = self._response_arena = None

    def _close_request_fd(self) -> None:
        if self._outbox:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_writer(self._request_fd)
            self._outbox.clear()
        os.close(self._request_fd)
        self._request_fd = -1


async def _exit_code_within(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    """The process's exit code once it has exited, polling for at most `seconds` (None: still
    running)."""
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return process.poll()
