"""Giving the heap back to the kernel after a transport drops large request buffers.

Data path position: below both transports. tfgate's HTTP/2 gRPC server (app/rpc/h2/server.py)
and the REST port's edge (app/rest/edge.py) each own one HeapTrim and report the request
bytes they freed without serving them: a gRPC call's buffered bytes when it ended unserved
(cancelled, reset, refused, its connection lost; InboundFrames._drop_requests) and an h2
connection's incomplete frame when the connection goes (GrpcH2Connection), a REST body
whose connection closed before it was complete (gone, timed out, over the size limit). Once
TRIM_AFTER_BYTES of them have been dropped, one malloc_trim(0) runs TRIM_DELAY_SECONDS later,
in the loop's default executor (ctypes lets go of the GIL for it).

Why: glibc raises its mmap threshold (up to 32 MiB) at the first free of a large block, so
later request buffers below it are carved from the heap, and freed between live allocations
they stay resident. Clients that send large requests and abandon them left the gateway up to
170 MiB over its RSS before the attack (gRPC, 200 MiB abandoned; REST once kept 177 of 200);
malloc_trim returns every arena's free pages (MADV_DONTNEED). Bytes of completed requests are
not counted: the next requests reuse them. The delay gathers many calls' ends into one trim,
and bounds trims to one per TRIM_DELAY_SECONDS however fast clients abandon. Without glibc (no
malloc_trim in the process) dropped bytes are only counted.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable

log = logging.getLogger("tfgate.heap")

TRIM_AFTER_BYTES = 32 << 20
TRIM_DELAY_SECONDS = 1.0


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrim:
    """Counts dropped request bytes; past `after_bytes`, schedules one trim. Event-loop only,
    apart from the trim itself."""

    __slots__ = ("after_bytes", "delay_seconds", "dropped_bytes", "pending", "source", "trim",
                 "trims")

    def __init__(
        self,
        source: str,
        after_bytes: int = TRIM_AFTER_BYTES,
        delay_seconds: float = TRIM_DELAY_SECONDS,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self.source = source  # whose bytes, for the log: "gRPC (h2)", "REST"
        self.after_bytes = after_bytes
        self.delay_seconds = delay_seconds
        self.trim = trim if trim is not None else _glibc_malloc_trim()
        self.dropped_bytes = 0  # since the last trim
        self.pending: asyncio.TimerHandle | asyncio.Future[None] | None = None
        self.trims = 0

    def dropped(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        """`size` request bytes were freed without being served."""
        self.dropped_bytes += size
        self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.trim is None or self.pending is not None or self.dropped_bytes < self.after_bytes:
            return
        self.pending = loop.call_later(self.delay_seconds, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        dropped, self.dropped_bytes = self.dropped_bytes, 0
        future = loop.run_in_executor(None, self._run, dropped)
        future.add_done_callback(lambda done: self._finished(done, loop))
        self.pending = future

    def _run(self, dropped_bytes: int) -> None:
        assert self.trim is not None
        started = time.perf_counter()
        self.trim(0)
        log.debug("%s: %d MiB of abandoned request bytes; heap trimmed in %.1f ms",
                  self.source, dropped_bytes >> 20, (time.perf_counter() - started) * 1e3)

    def _finished(self, future: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        self.pending = None
        self.trims += 1
        if not future.cancelled() and future.exception() is not None:
            log.warning("malloc_trim failed: %r", future.exception())
        if not loop.is_closed():
            self._schedule(loop)  # bytes dropped while it ran

    def cancel(self) -> None:
        """The server stops: a scheduled trim no longer runs (one already running ends)."""
        if isinstance(self.pending, asyncio.TimerHandle):
            self.pending.cancel()
            self.pending = None
