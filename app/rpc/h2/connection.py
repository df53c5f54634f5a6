"""One client connection of tfgate's HTTP/2 gRPC server: frames in, frames out.

Data path position: under app/rpc/h2/server.py (which accepts connections) and above
app/rpc/h2/call.py (which runs each call's servicer). GrpcH2Connection cuts the bytes a
client sends into frames (RFC 9113) and hands them to its base class InboundFrames
(app/rpc/h2/inbound.py: checks, flow control, flood guards); here it opens an H2Call per
stream and feeds streaming handlers through a bounded queue; its base class OutboundFrames
(app/rpc/h2/outbound.py) writes each call's response and releases the call. It pauses
reading while the client does not read, and enforces the call deadline (grpc-timeout), the
server's concurrent call cap, the handshake and idle timeouts, grpc core's keepalive PINGs
(app/rpc/h2/keepalive.py, on the same one timer) and the connection cap, and ends with
GOAWAY at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from app.rpc.h2 import frames as h2
from app.rpc.h2.call import (
    END_OF_REQUESTS,
    CallFailed,
    H2Call,
    serve,
    take_messages,
)
from app.rpc.h2.context import CallContext, call_metadata, parse_grpc_timeout, peer_name
from app.rpc.h2.frame_quota import FrameQuota
from app.rpc.h2.inbound import (
    MAX_FRAME_BYTES,
    MAX_HEADER_LIST_BYTES,
    STREAM_WINDOW_BYTES,
    InboundFrames,
    ProtocolError,
)
from app.rpc.h2.keepalive import KEEPALIVE_PAYLOAD, SEND_PING, WAIT, Keepalive
from app.rpc.h2.limits import (
    CONNECTION_WINDOW_BYTES,
    CONTROL_BURST,
    CONTROL_FRAMES_PER_SECOND,
    OUTPUT_HIGH_WATER_BYTES,
    OUTPUT_LOW_WATER_BYTES,
    REQUEST_QUEUE_MESSAGES,
    RESET_BURST,
    RESETS_PER_SECOND,
    UNARY_BUFFER_MESSAGES,
    Budget,
    H2Limits,
)
from app.rpc.h2.outbound import OutboundFrames
from app.rpc.h2.quota import RequestQuota
from app.rpc.h2.replies import (
    GRPC_CONTENT_TYPE,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
)

log = logging.getLogger("tfgate.grpc")



class MethodLookup(Protocol):
    def lookup(self, path: str) -> Any: ...


class ConnectionOwner(Protocol):
    """What a connection uses of the server that accepted it (GrpcH2Server): the server
    module builds connections, so this one names the owner instead of importing it."""

    limits: H2Limits
    request_quota: RequestQuota  # request bytes all its connections hold together
    frame_quota: FrameQuota  # incomplete frames in its connections' read buffers
    registry: MethodLookup
    connections: set[Any]  # the open connections, for shutdown
    closing: bool
    active_calls: int
    max_concurrent_calls: int

    def call_released(self) -> None: ...


class GrpcH2Connection(InboundFrames, OutboundFrames, asyncio.Protocol):
    """One client connection: frames in (InboundFrames), frames out (OutboundFrames), one
    task per call."""

    def __init__(self, server: ConnectionOwner) -> None:
        self.server = server
        self.limits = server.limits
        self.quota = server.request_quota
        self.heap_trim = server.heap_trim
        self.frame_quota = server.frame_quota
        self.message_limit_bytes = server.limits.max_receive_message_bytes
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.partial_frame_bytes = 0  # what the buffer's incomplete frame holds in the quota
        self.partial_since = 0.0  # when that frame's first bytes arrived (loop time)
        self.preface_seen = False
        self.settings_seen = False  # the client's first frame must be SETTINGS
        self.decoder = h2.HeaderDecoder(MAX_HEADER_LIST_BYTES)
        self.calls: dict[int, H2Call] = {}
        self.last_stream_id = 0
        self.send_window = h2.DEFAULT_WINDOW  # connection level, peer's credit to us
        self.peer_stream_window = h2.DEFAULT_WINDOW
        self.peer_max_frame = h2.DEFAULT_MAX_FRAME_BYTES
        self.receive_window = CONNECTION_WINDOW_BYTES  # what the client may still send
        self.granted = 0  # consumed bytes not yet given back to the connection window
        # Partly received unary requests, and what they may take before the connection's
        # window stops being refilled for them (limits.UNARY_BUFFER_MESSAGES).
        self.unary_buffered_bytes = 0
        self.unary_buffer_limit_bytes = UNARY_BUFFER_MESSAGES * self.message_limit_bytes
        self.blocked: dict[int, H2Call] = {}  # calls with data waiting for window
        self.header_stream = 0  # a HEADERS block waiting for CONTINUATION frames
        self.header_flags = 0
        self.header_block = bytearray()
        self.going_away = False
        self.writing_paused = False  # the client is not reading what we send
        self.replies_while_paused = 0
        self.resets = Budget(RESET_BURST, RESETS_PER_SECOND)
        self.control_frames = Budget(CONTROL_BURST, CONTROL_FRAMES_PER_SECOND)
        self.recently_reset: dict[int, None] = {}  # insertion-ordered, bounded
        self.valid_blocks: dict[bytes, list[tuple[str, str]]] = {}  # checked request headers
        self.idle_since = 0.0
        # The handshake timeout, then the idle timeout and keepalive (one timer for both).
        self.timer: asyncio.TimerHandle | None = None
        self.clock: Callable[[], float] = time.monotonic  # the loop's, once connected
        self.read_at = 0.0  # when bytes last came from the client
        self.keepalive = Keepalive(server.limits)
        # HEADERS, DATA or WINDOW_UPDATE written since the client's last PING: its ping
        # strikes start over (checked at its next PING, see InboundFrames._police_ping).
        self.data_sent = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time
        self.peer = peer_name(transport)
        limits = self.limits
        if limits.max_connections and len(self.server.connections) >= limits.max_connections:
            # Over the cap: refused before any work, so idle sockets cannot pile up.
            log.warning("gRPC connection from %s refused: %d connections open (the limit)",
                        self.peer, len(self.server.connections))
            self._close_with(h2.ENHANCE_YOUR_CALM, settings=True)
            return
        self.server.connections.add(self)
        self.transport.set_write_buffer_limits(OUTPUT_HIGH_WATER_BYTES, OUTPUT_LOW_WATER_BYTES)
        settings = h2.settings_payload({
            h2.SETTINGS_MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.SETTINGS_INITIAL_WINDOW_SIZE: STREAM_WINDOW_BYTES,
            h2.SETTINGS_MAX_FRAME_SIZE: MAX_FRAME_BYTES,
            h2.SETTINGS_MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
        })
        self.transport.write(
            h2.frame(h2.SETTINGS, 0, 0, settings)
            + h2.frame(h2.WINDOW_UPDATE, 0, 0,
                       h2.u32(CONNECTION_WINDOW_BYTES - h2.DEFAULT_WINDOW))
        )
        self.idle_since = self.loop.time()
        if limits.handshake_timeout_seconds > 0:
            self.timer = self.loop.call_later(limits.handshake_timeout_seconds, self._too_slow)
        if self.server.closing:
            self.go_away()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.frame_quota.release(self)
        self._drop_partial_frame()
        if self.timer is not None:
            self.timer.cancel()
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            self._cancel(call)

    def pause_writing(self) -> None:
        """The client reads slower than we write: stop reading its requests until it
        catches up, so neither side's bytes pile up here."""
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.replies_while_paused = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        for call in list(self.calls.values()):  # streaming writers waiting for room
            if call.writable is not None and not call.writable.done():
                call.writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.read_at = self.clock()
        buffer = self.buffer
        buffer += data
        waited = self.partial_frame_bytes  # an incomplete frame this read may complete
        if waited:
            self.frame_quota.release(self)
            self.partial_frame_bytes = 0
        pos = 0
        try:
            if not self.preface_seen:
                if not h2.PREFACE.startswith(bytes(buffer[: len(h2.PREFACE)])):
                    raise ProtocolError(h2.PROTOCOL_ERROR, "not an HTTP/2 client preface")
                if len(buffer) < len(h2.PREFACE):
                    return
                self.preface_seen = True
                pos = len(h2.PREFACE)
            end = len(buffer)
            while end - pos >= h2.FRAME_HEADER_BYTES:
                length = int.from_bytes(buffer[pos : pos + 3], "big")
                if length > MAX_FRAME_BYTES:
                    raise ProtocolError(h2.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - pos < h2.FRAME_HEADER_BYTES + length:
                    break
                kind = buffer[pos + 3]
                flags = buffer[pos + 4]
                stream_id = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & h2.MAX_WINDOW
                start = pos + h2.FRAME_HEADER_BYTES
                payload = bytes(buffer[start : start + length])
                pos = start + length
                if not self.settings_seen:
                    self._first_frame(kind, flags)
                self._on_frame(kind, flags, stream_id, payload)
                if self.transport is None:
                    return
        except ProtocolError as exc:
            log.debug("gRPC connection from %s: %s", self.peer, exc)
            self._close_with(exc.code, debug=exc.debug)
            return
        except Exception:
            log.exception("gRPC connection from %s failed; closing it", self.peer)
            self._close_with(h2.INTERNAL_ERROR)
            return
        del buffer[:pos]
        if buffer:
            if pos or not waited:  # a new frame began in this read
                self.partial_since = self.read_at
            self._hold_partial_frame(len(buffer))

    def _hold_partial_frame(self, size: int) -> None:
        """An incomplete frame (up to MAX_FRAME_BYTES) waits in the read buffer until the next
        read: it counts in the server's frame quota (app/rpc/h2/frame_quota.py), which makes
        room by closing connections whose frame stalled, else this one is closed."""
        if self.frame_quota.hold(self, size, self.read_at):
            self.partial_frame_bytes = size
        else:
            self.evict_stalled_frame()

    def evict_stalled_frame(self) -> None:
        """Closed for the frame quota (ENHANCE_YOUR_CALM): its incomplete frame is dropped."""
        self._drop_partial_frame()
        del self.buffer[:]
        self._close_with(h2.ENHANCE_YOUR_CALM)

    def _drop_partial_frame(self) -> None:
        """The incomplete frame will never complete: its bytes count towards the next heap
        trim (core/heap_trim.py), as abandoned request bytes do (many connections' frames
        of up to 1 MiB each are carved from the heap, not mapped apart)."""
        if self.partial_frame_bytes and self.loop is not None:
            self.heap_trim.dropped(self.partial_frame_bytes, self.loop)
        self.partial_frame_bytes = 0

    def _first_frame(self, kind: int, flags: int) -> None:
        """RFC 9113 section 3.4: the preface ends with the client's SETTINGS."""
        if kind != h2.SETTINGS or flags & h2.ACK:
            raise ProtocolError(h2.PROTOCOL_ERROR, "first frame is not SETTINGS")
        self.settings_seen = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._arm_timer(self.read_at)

    # -- timers ---------------------------------------------------------------------------

    def _too_slow(self) -> None:
        log.debug("gRPC connection from %s: no HTTP/2 preface in time; closing it", self.peer)
        self._close_with(h2.NO_ERROR, goaway=self.preface_seen)

    def _arm_timer(self, now: float) -> None:
        """One timer for the idle timeout and keepalive, at the earlier of the two. Both
        are checked lazily: what moves a deadline later (a read, a call) does not touch
        the timer; when it fires early, it is armed again."""
        wake = self.keepalive.next_check_at(self.read_at)
        idle_seconds = self.limits.idle_timeout_seconds
        if idle_seconds > 0:
            # With calls open the connection is not idle: looked at again an idle time on.
            wake = min(wake, (now if self.calls else self.idle_since) + idle_seconds)
        if wake < math.inf and self.loop is not None:
            self.timer = self.loop.call_at(wake, self._on_timer)

    def _rearm_timer(self) -> None:
        """For the one event that moves a deadline earlier: our keepalive PING's ACK (the
        next PING is due a keepalive time on, which may come before the ACK's deadline)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._arm_timer(self.read_at)

    def _on_timer(self) -> None:
        self.timer = None
        if self.transport is None or self.loop is None:
            return
        now = self.loop.time()
        idle_seconds = self.limits.idle_timeout_seconds
        if idle_seconds > 0 and not self.calls and now >= self.idle_since + idle_seconds:
            # grpc's max_connection_idle: no call open for the idle timeout, GOAWAY and
            # closed (PINGs do not keep a connection open).
            log.debug("gRPC connection from %s idle for %ss; closing it", self.peer, idle_seconds)
            self.go_away()
            return
        verdict = self.keepalive.check(now, self.read_at, bool(self.calls))
        if verdict == SEND_PING:
            self._write(h2.frame(h2.PING, 0, 0, KEEPALIVE_PAYLOAD))
        elif verdict != WAIT:
            log.info("gRPC connection from %s: keepalive PING not answered (%s); closing it",
                     self.peer, verdict)
            self._close_with(h2.ENHANCE_YOUR_CALM, debug=verdict.encode())
            return
        self._arm_timer(now)

    # -- calls ----------------------------------------------------------------------------

    def _start_call(self, stream_id: int, headers: list[tuple[str, str]], end: bool) -> None:
        path = content_type = ""
        method = None
        timeout = None
        encoding = "identity"
        for name, value in headers:
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout = parse_grpc_timeout(value)
            elif name == "grpc-encoding":
                encoding = value
        if method != "POST" or not content_type.startswith(GRPC_CONTENT_TYPE):
            # Not a gRPC request: HTTP's answer, as gRPC servers give it.
            block = h2.literal_block([(":status", "415"), ("content-type", "text/plain")])
            self.data_sent = True
            self._write(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, stream_id, block))
            if not end:  # its DATA may still come: ignored, not a protocol error
                self._reset_stream(stream_id, h2.NO_ERROR)
            return
        server = self.server
        call = H2Call(stream_id, self.peer_stream_window, STREAM_WINDOW_BYTES, encoding)
        call.remote_closed = end
        self.calls[stream_id] = call
        server.active_calls += 1
        handler = server.registry.lookup(path)
        if handler is None:
            self.end_call(call, grpc.StatusCode.UNIMPLEMENTED, METHOD_NOT_FOUND)
            return
        if server.max_concurrent_calls and server.active_calls > server.max_concurrent_calls:
            self.end_call(call, grpc.StatusCode.RESOURCE_EXHAUSTED, LIMIT_EXCEEDED)
            return
        call.handler = handler
        loop = asyncio.get_running_loop()
        deadline = None
        if timeout is not None:
            deadline = loop.time() + timeout
            call.deadline_timer = loop.call_at(deadline, self._deadline_passed, call)
        call.context = CallContext(
            call_metadata(headers),
            None if timeout is None else time.monotonic() + timeout,
            self.peer,
            lambda message: self.write_message(call, message),
        )
        if handler.request_streaming:
            call.requests = asyncio.Queue()
            call.task = loop.create_task(serve(self, call, None))
            if end:
                self._queue_requests(call)
        elif end:
            self._end_of_request(call)

    def _end_of_request(self, call: H2Call, last: bytes = b"") -> None:
        """The client finished sending: a unary call starts, a streaming one sees the end.
        `last` is the final DATA frame's data, parsed in place when it holds the whole
        request (the usual case)."""
        call.remote_closed = True
        if call.ended:
            return
        if call.requests is not None:
            self._queue_requests(call)
            return
        if call.body:
            call.body += last
            data: bytes | bytearray = call.body  # not changed again: the request is complete
        else:
            data = last
        self._unbuffer(call)  # complete: what was withheld is consumed now
        self._return_quota(call, call.quota_bytes)  # and handed to the handler
        try:
            messages, used = take_messages(data, self.message_limit_bytes)
            if len(messages) != 1 or used != len(data):
                raise CallFailed(grpc.StatusCode.INTERNAL,
                                 f"Expected one request message, got {len(messages)}")
        except CallFailed as exc:
            self.end_call(call, exc.code, exc.details)
            return
        call.task = asyncio.get_running_loop().create_task(serve(self, call, messages[0]))

    def _queue_requests(self, call: H2Call) -> None:
        """Move a streaming call's complete request messages from its buffer to its queue,
        while the queue has room; window goes back to the client only then, so a handler
        that does not keep up holds the client back instead of filling memory."""
        requests = call.requests
        assert requests is not None
        room = REQUEST_QUEUE_MESSAGES - requests.qsize()
        if room <= 0 or call.queued_bytes >= STREAM_WINDOW_BYTES:
            return
        try:
            messages, used = take_messages(call.body, self.message_limit_bytes, room)
        except CallFailed as exc:
            self.end_call(call, exc.code, exc.details)
            if call.task is not None:
                call.task.cancel()  # its handler waits for requests that will not come
            return
        for compressed, view in messages:
            message = bytes(view)
            view.release()  # the body must be free to shrink
            call.queued_bytes += 5 + len(message)
            requests.put_nowait((compressed, message))
        del call.body[:used]
        if call.remote_closed and len(messages) < room and not call.end_queued:
            call.end_queued = True  # whatever is left is not a whole message: ignored
            requests.put_nowait(END_OF_REQUESTS)
        if requests.qsize() < REQUEST_QUEUE_MESSAGES and call.queued_bytes < STREAM_WINDOW_BYTES:
            self._grant(call, call.held)
            call.held = 0

    async def write_message(self, call: H2Call, message: Any) -> None:
        """A streamed response message; waits while the peer's window holds it back."""
        if call.ended:
            raise asyncio.CancelledError()
        self.send_message(call, call.handler.response_serializer(message))
        # Also while the client is not reading: a stream it never reads must not fill
        # memory with replies (resume_writing() wakes the writer).
        while (call.outbox or self.writing_paused) and not call.ended:
            call.writable = asyncio.get_running_loop().create_future()
            await call.writable

    # -- shutdown -------------------------------------------------------------------------

    def go_away(self) -> None:
        """No new calls (GOAWAY with the last stream seen); open calls may finish."""
        if self.going_away or self.transport is None:
            return
        self.going_away = True
        self._write(self._goaway(h2.NO_ERROR))
        if not self.calls:
            self._close_with(h2.NO_ERROR, goaway=False)

    def abort_calls(self) -> None:
        """The grace period is over: open calls end UNAVAILABLE and the connection closes."""
        for call in list(self.calls.values()):
            self._end_now(call, grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
        self._close_with(h2.NO_ERROR, goaway=not self.going_away)

    def _close_with(self, code: int, *, goaway: bool = True, settings: bool = False,
                    debug: bytes = b"") -> None:
        """GOAWAY(code, debug data) (after our SETTINGS when none were sent yet), then
        close."""
        if self.transport is None:
            return
        if goaway:
            with contextlib.suppress(Exception):
                head = h2.frame(h2.SETTINGS, 0, 0) if settings else b""
                self.transport.write(head + self._goaway(code, debug))
        self.transport.close()

    def _goaway(self, code: int, debug: bytes = b"") -> bytes:
        return h2.frame(h2.GOAWAY, 0, 0, h2.u32(self.last_stream_id) + h2.u32(code) + debug)
