"""The limits tfgate's HTTP/2 gRPC server keeps against hostile or broken clients.

Data path position: beside app/rpc/h2/connection.py, which consults these on every
connection, frame and request header block. H2Limits holds the configured bounds (from the
--grpc_* flags, see app/rpc/server.py; the keepalive and ping policy's are applied by
app/rpc/h2/keepalive.py); Budget is the token bucket behind the flood guards
(RST_STREAM for Rapid Reset, CVE-2023-44487; PING/SETTINGS/empty frames); request_header_error()
applies RFC 9113 section 8.2-8.3 to a request's header fields.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

INT32_MAX = 2**31 - 1

# Connection-level receive window: bytes a client may have in flight before tfgate has
# consumed them. Unary request bytes count as consumed when buffered (the message they
# belong to is bounded by its length prefix) while the connection's partly received unary
# requests stay within UNARY_BUFFER_MESSAGES receive limits; past that, only once their
# message is complete (or its call ends). Streaming request bytes count once the handler
# takes the message.
CONNECTION_WINDOW_BYTES = 64 << 20
UNARY_BUFFER_MESSAGES = 2
# Output queued in the transport beyond this pauses reading from the client until it drains
# (asyncio calls pause_writing()/resume_writing() at these marks).
OUTPUT_HIGH_WATER_BYTES = 1 << 20
OUTPUT_LOW_WATER_BYTES = 256 << 10
# Request messages a streaming call may have waiting for its handler; more stay in the
# stream's (flow-controlled) buffer.
REQUEST_QUEUE_MESSAGES = 16
# Compressed messages larger than this, or inflating past the second size, are inflated
# in a thread, not on the event loop.
INLINE_INFLATE_BYTES = 64 << 10
INLINE_INFLATE_OUTPUT_BYTES = 4 << 20
# ...and in pieces of this size, so the GIL is never held for one huge copy.
INFLATE_CHUNK_BYTES = 16 << 20
# Rapid Reset: streams a client may open and reset (or have refused) in a burst, and the
# rate at which that allowance comes back.
RESET_BURST = 1000
RESETS_PER_SECOND = 500.0
# PING, SETTINGS and empty DATA/HEADERS frames: each costs a reply or work, none a call.
CONTROL_BURST = 1000
CONTROL_FRAMES_PER_SECOND = 500.0
# Control replies (PING/SETTINGS ACKs) written while the client is not reading our output:
# past this many the client is flooding.
MAX_CONTROL_REPLIES_WHILE_PAUSED = 128
# Stream ids this side reset whose late frames are still ignored (RFC 9113 section 5.4.2).
RECENTLY_RESET_STREAMS = 1024

# Header fields HTTP/2 forbids (RFC 9113 section 8.2.2); "te" is allowed with "trailers".
CONNECTION_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
REQUEST_PSEUDO_HEADERS = frozenset({":method", ":scheme", ":path", ":authority"})


@dataclass(frozen=True)
class H2Limits:
    """What one gRPC server (all its listeners) allows. 0 disables a count or time limit,
    except max_buffered_request_bytes, which is always on (app/rpc/h2/quota.py)."""

    max_connections: int = 1024
    idle_timeout_seconds: float = 300.0
    handshake_timeout_seconds: float = 10.0
    max_concurrent_streams: int = 256
    max_receive_message_bytes: int = INT32_MAX
    # Request bytes all connections together may hold before they reach a handler.
    max_buffered_request_bytes: int = 1 << 30
    # grpc core's server keepalive and ping-abuse policy, its defaults (app/rpc/h2/keepalive.py).
    keepalive_time_seconds: float = 7200.0  # 0: no keepalive PINGs
    keepalive_timeout_seconds: float = 20.0
    min_recv_ping_interval_without_data_seconds: float = 300.0
    max_ping_strikes: int = 2  # 0: too-early PINGs never close the connection
    keepalive_permit_without_calls: bool = False


class Budget:
    """A token bucket: spend() is False once a burst of `burst` is used faster than
    `per_second` comes back."""

    __slots__ = ("burst", "per_second", "tokens", "updated")

    def __init__(self, burst: int, per_second: float) -> None:
        self.burst = float(burst)
        self.per_second = per_second
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def too_large(length: int, limit: int) -> str:
    """grpc's text for a message over the receive limit."""
    return f"Received message larger than max ({length} vs. {limit})"


def request_header_error(headers: Sequence[tuple[str, str]]) -> str:
    """Why a request header block is malformed (RFC 9113 sections 8.2-8.3), or ""."""
    regular_seen = False
    pseudo: set[str] = set()
    for name, value in headers:
        if name.startswith(":"):
            if regular_seen:
                return f"pseudo-header {name} after regular fields"
            if name not in REQUEST_PSEUDO_HEADERS or name in pseudo:
                return f"pseudo-header {name} unknown or repeated"
            pseudo.add(name)
            continue
        regular_seen = True
        if name != name.lower():
            return f"uppercase header name {name!r}"
        if name in CONNECTION_HEADERS or (name == "te" and value != "trailers"):
            return f"connection-specific header {name!r}"
    if not {":method", ":scheme", ":path"} <= pseudo:
        return "missing pseudo-header"
    return ""
