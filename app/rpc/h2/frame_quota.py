"""One server-wide count of the incomplete frames waiting in the connections' read buffers.

Data path position: beside app/rpc/h2/quota.py. GrpcH2Connection.data_received()
(app/rpc/h2/connection.py) parses every complete frame of a read; what is left is at most
one incomplete frame (up to the 1 MiB frame size advertised), which waits in the
connection's buffer for the next read. GrpcH2Server owns one FrameQuota for all its
connections; a connection holds its incomplete frame's bytes in it until the next read.

Why: a frame's bytes belong to no call until it is complete, so the request quota cannot
count them, and thousands of connections each trickling one large frame would otherwise pin
memory outside any bound. Why eviction: a legitimate client's frame completes within
milliseconds of its first bytes, a hostile one's never; so when the count is full, the
connections whose incomplete frame has waited longest (at least STALLED_FRAME_SECONDS) are
closed to make room, and only when none has stalled is the connection that needs the room
closed. Filling the count therefore takes a fresh large frame on every held connection every
second; uploads in progress are never cut for frames that stalled.
"""

from __future__ import annotations

import logging
from typing import Protocol

from app.core.throttled_log import ThrottledWarning

log = logging.getLogger("tfgate.grpc")

# An incomplete frame this old (since its first bytes arrived) may be evicted for room.
STALLED_FRAME_SECONDS = 1.0
# The count's share of the request quota (--grpc_max_buffered_request_bytes)...
INCOMPLETE_FRAME_SHARE = 8
# ...but never fewer than this many whole frames of the largest size advertised.
INCOMPLETE_FRAMES_MIN = 4


class FrameHolder(Protocol):
    """A connection as the frame quota sees it (app/rpc/h2/connection.py)."""

    peer: str
    partial_since: float  # loop time the incomplete frame's first bytes arrived

    def evict_stalled_frame(self) -> None: ...


class FrameQuota:
    """Bytes of incomplete frames held, at most limit_bytes, and who holds them.
    Event-loop only."""

    __slots__ = ("closed", "closes_log", "held_bytes", "holders", "limit_bytes")

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.holders: dict[FrameHolder, int] = {}  # holder -> bytes it holds
        self.closed = 0  # connections closed for room (evicted, or refused when none was)
        self.closes_log = ThrottledWarning(log)

    def hold(self, holder: FrameHolder, size: int, now: float) -> bool:
        """Count `holder`'s incomplete frame of `size` bytes (it holds none at the call).
        With no room, holders whose frame has stalled are evicted, oldest first, until it
        fits; False (nothing counted) when it still does not: the caller closes itself."""
        while self.held_bytes + size > self.limit_bytes:
            oldest = min(self.holders, key=_started, default=None)
            if oldest is None or now - oldest.partial_since < STALLED_FRAME_SECONDS:
                self._note_close(holder.peer, "no incomplete frame had stalled")
                return False
            self.release(oldest)
            self._note_close(oldest.peer, "its incomplete frame had stalled")
            oldest.evict_stalled_frame()
        self.held_bytes += size
        self.holders[holder] = size
        return True

    def release(self, holder: FrameHolder) -> None:
        """The holder's frame completed, or it is gone: its bytes leave the count."""
        self.held_bytes -= self.holders.pop(holder, 0)

    def _note_close(self, peer: str, why: str) -> None:
        self.closed += 1
        self.closes_log.note(
            "gRPC incomplete frames fill their quota: %d connection(s) closed with "
            "ENHANCE_YOUR_CALM since the last report, the latest from %s (%s; %d of %d bytes "
            "held)", peer, why, self.held_bytes, self.limit_bytes,
        )


def _started(holder: FrameHolder) -> float:
    return holder.partial_since


def frame_quota_bytes(request_quota_bytes: int, max_frame_bytes: int) -> int:
    """The frame quota for a request quota and the frame size advertised."""
    return max(request_quota_bytes // INCOMPLETE_FRAME_SHARE,
               INCOMPLETE_FRAMES_MIN * max_frame_bytes)
