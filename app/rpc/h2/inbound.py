"""The incoming half of a gRPC HTTP/2 connection: frames checked, dispatched, paid for.

Data path position: app/rpc/h2/connection.py's GrpcH2Connection reads frames off the socket
and hands each to InboundFrames._on_frame() (this module, its base class); what a frame
starts or feeds (a call, its request bytes) goes back to the connection's call methods.
Here live RFC 9113's rules for what a client may send (connection errors end with GOAWAY
through ProtocolError, stream errors reset one stream), flow control on the receive side
(credit is given back only for consumed bytes), the server-wide quota on buffered request
bytes (app/rpc/h2/quota.py: taken here as DATA is buffered, given back as it leaves), the
flood guards of app/rpc/h2/limits.py (Rapid Reset, PING/SETTINGS floods, control replies to a
client that does not read), and grpc core's ping-abuse policy (app/rpc/h2/keepalive.py: too
many PINGs with no data sent).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc
import hpack

from app.core.heap_trim import HeapTrim
from app.rpc.h2 import frames as h2
from app.rpc.h2.call import CallFailed, H2Call, declared_length
from app.rpc.h2.keepalive import TOO_MANY_PINGS, Keepalive
from app.rpc.h2.limits import (
    MAX_CONTROL_REPLIES_WHILE_PAUSED,
    RECENTLY_RESET_STREAMS,
    Budget,
    H2Limits,
    request_header_error,
)
from app.rpc.h2.quota import RequestQuota

log = logging.getLogger("tfgate.grpc")

# The receive window each stream starts with, and how much a connection consumes before it
# returns credit: large, so a 64 kB request never waits for a WINDOW_UPDATE.
STREAM_WINDOW_BYTES = 8 << 20
CONNECTION_CREDIT_BYTES = 1 << 20
MAX_FRAME_BYTES = 1 << 20  # advertised: a 64 kB request arrives in one DATA frame
# A request's header block, compressed and decoded (grpc's own hard limit is 16 KiB):
# enough for any metadata, and bounded so a CONTINUATION flood cannot grow without end.
MAX_HEADER_BLOCK_BYTES = 64 << 10
MAX_HEADER_LIST_BYTES = 64 << 10


class ProtocolError(Exception):
    """The peer broke HTTP/2 (or gRPC's rules for it): the connection ends with
    GOAWAY(code, debug data)."""

    def __init__(self, code: int, message: str, debug: bytes = b"") -> None:
        super().__init__(message)
        self.code = code
        self.debug = debug


class InboundFrames:
    """Frames from the client, for GrpcH2Connection (which sets the state below up)."""

    if TYPE_CHECKING:  # kept by GrpcH2Connection
        limits: H2Limits
        quota: RequestQuota  # the server's, shared by all its connections
        heap_trim: HeapTrim  # the server's too
        loop: asyncio.AbstractEventLoop | None
        peer: str
        calls: dict[int, H2Call]
        last_stream_id: int
        message_limit_bytes: int
        decoder: h2.HeaderDecoder
        send_window: int
        peer_stream_window: int
        peer_max_frame: int
        receive_window: int
        granted: int
        unary_buffered_bytes: int
        unary_buffer_limit_bytes: int
        blocked: dict[int, H2Call]
        header_stream: int
        header_flags: int
        header_block: bytearray
        going_away: bool
        writing_paused: bool
        replies_while_paused: int
        resets: Budget
        control_frames: Budget
        recently_reset: dict[int, None]
        valid_blocks: dict[bytes, list[tuple[str, str]]]
        read_at: float
        keepalive: Keepalive
        data_sent: bool

        def _start_call(self, stream_id: int, headers: list[tuple[str, str]],
                        end: bool) -> None: ...
        def _end_of_request(self, call: H2Call, last: bytes = b"") -> None: ...
        def _queue_requests(self, call: H2Call) -> None: ...
        def end_call(self, call: H2Call, code: grpc.StatusCode, details: str = "") -> None: ...
        def _end_now(self, call: H2Call, code: grpc.StatusCode, details: str) -> None: ...
        def _flush(self, call: H2Call) -> None: ...
        def _cancel(self, call: H2Call) -> None: ...
        def _write(self, data: bytes) -> None: ...
        def _rearm_timer(self) -> None: ...

    # -- frames in ------------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.header_stream and kind != h2.CONTINUATION:
            raise ProtocolError(h2.PROTOCOL_ERROR, "header block interrupted")
        if kind == h2.DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == h2.HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == h2.CONTINUATION:
            if stream_id != self.header_stream or not stream_id:
                raise ProtocolError(h2.PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.header_block += payload
            if len(self.header_block) > MAX_HEADER_BLOCK_BYTES:
                raise ProtocolError(h2.ENHANCE_YOUR_CALM, "header block too large")
            if flags & h2.END_HEADERS:
                block, self.header_block = bytes(self.header_block), bytearray()
                self.header_stream = 0
                self._on_header_block(stream_id, self.header_flags, block)
        elif kind == h2.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == h2.SETTINGS:
            if stream_id:
                raise ProtocolError(h2.PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & h2.ACK:
                if payload:
                    raise ProtocolError(h2.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            else:
                self._spend_control()
                self._on_settings(payload)
        elif kind == h2.PING:
            if stream_id:
                raise ProtocolError(h2.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ProtocolError(h2.FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if flags & h2.ACK:
                if self.keepalive.acked(payload, self.read_at):
                    self._rearm_timer()
            else:
                self._spend_control()
                self._control_reply(h2.frame(h2.PING, h2.ACK, 0, payload))
                self._police_ping()
        elif kind == h2.RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == h2.PRIORITY_FRAME:
            if not stream_id:
                raise ProtocolError(h2.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._reset_stream(stream_id, h2.FRAME_SIZE_ERROR)
        elif kind == h2.PUSH_PROMISE:
            raise ProtocolError(h2.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # GOAWAY from the client: its open calls still get their answers; unknown frame
        # types are ignored (RFC 9113 section 5.5).

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(h2.PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = _strip(flags, payload)
        if flags & h2.PRIORITY:
            if len(payload) < 5:
                raise ProtocolError(h2.FRAME_SIZE_ERROR, "HEADERS priority fields cut short")
            payload = payload[5:]
        if len(payload) > MAX_HEADER_BLOCK_BYTES:
            raise ProtocolError(h2.ENHANCE_YOUR_CALM, "header block too large")
        if flags & h2.END_HEADERS:  # the usual case: the whole block in one frame
            self._on_header_block(stream_id, flags, payload)
        else:
            self.header_stream, self.header_flags = stream_id, flags
            self.header_block = bytearray(payload)

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        # Always decoded: hpack's dynamic table must follow every block.
        try:
            headers = self.decoder.decode(block)
        except hpack.HPACKError as exc:
            raise ProtocolError(h2.COMPRESSION_ERROR, f"header block: {exc}") from None
        call = self.calls.get(stream_id)
        if call is not None:  # trailers from the client end its request
            if call.remote_closed:
                raise ProtocolError(h2.STREAM_CLOSED, f"HEADERS after END_STREAM on {stream_id}")
            if not flags & h2.END_STREAM:  # RFC 9113 section 8.1: trailers end the stream
                self._stream_error(call, h2.PROTOCOL_ERROR)
            else:
                self._end_of_request(call)
            return
        if not stream_id % 2:
            raise ProtocolError(h2.PROTOCOL_ERROR, f"even stream id {stream_id}")
        if stream_id <= self.last_stream_id:
            if stream_id in self.recently_reset:
                return  # this side reset it: late frames are ignored (section 5.4.2)
            raise ProtocolError(h2.PROTOCOL_ERROR, f"HEADERS on closed stream {stream_id}")
        self.last_stream_id = stream_id
        if self.going_away:
            self._reset_stream(stream_id, h2.REFUSED_STREAM)
            return
        if len(self.calls) >= self.limits.max_concurrent_streams:
            self._spend_reset()  # a client that ignores the limit floods like a resetter
            self._reset_stream(stream_id, h2.REFUSED_STREAM)
            return
        # A block decoded to the very same list before was valid then: checked once.
        if self.valid_blocks.get(block) is not headers:
            malformed = request_header_error(headers)
            if malformed:  # a stream error (RFC 9113 section 8.1.1)
                log.debug("gRPC stream %d from %s: %s", stream_id, self.peer, malformed)
                self._spend_reset()
                self._reset_stream(stream_id, h2.PROTOCOL_ERROR)
                return
            if len(self.valid_blocks) >= h2.MEMO_ENTRIES:
                self.valid_blocks.clear()
            self.valid_blocks[block] = headers
        self._start_call(stream_id, headers, bool(flags & h2.END_STREAM))

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(h2.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if size > self.receive_window:
            raise ProtocolError(h2.FLOW_CONTROL_ERROR, "DATA past the connection window")
        self.receive_window -= size
        if not size and not flags & h2.END_STREAM:
            self._spend_control()  # an empty frame costs work and carries nothing
        call = self.calls.get(stream_id)
        if call is None or call.remote_closed or call.ended:
            if stream_id > self.last_stream_id:
                raise ProtocolError(h2.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            if call is None and stream_id not in self.recently_reset:
                raise ProtocolError(h2.STREAM_CLOSED, f"DATA on closed stream {stream_id}")
            self._grant_connection(size)  # dropped: a call already answered or cancelled
            return
        if size > call.receive_window:
            raise ProtocolError(h2.FLOW_CONTROL_ERROR, "DATA past the stream window")
        call.receive_window -= size
        data = _strip(flags, payload)
        # A unary request's last frame is not buffered: it completes the message, which goes
        # straight to the handler. Anything else is held, so it must fit the server's quota.
        unary_end = call.requests is None and flags & h2.END_STREAM
        if not unary_end and not self._hold_request(call, len(data)):
            self._grant_connection(size)  # dropped, like the rest of the refused call's DATA
            return
        if call.requests is None:
            self._buffer_unary(call, size)
            if unary_end:
                self._end_of_request(call, data)
                return
            call.body += data
            try:
                self._check_unary_body(call)
            except CallFailed as exc:
                self.end_call(call, exc.code, exc.details)
            return
        self._grant(call, size - len(data))  # padding is consumed on arrival
        call.held += len(data)
        call.body += data
        if flags & h2.END_STREAM:
            call.remote_closed = True
        self._queue_requests(call)

    def _check_unary_body(self, call: H2Call) -> None:
        """The request's length prefix against the receive limit as soon as it arrives, and
        nothing beyond the one message it declares."""
        body = call.body
        if not call.expected:
            if len(body) < 5:
                return
            call.expected = 5 + declared_length(body, self.message_limit_bytes)
        if len(body) > call.expected:
            raise CallFailed(grpc.StatusCode.INTERNAL,
                             "Expected one request message, got more than one")

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(h2.FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        if stream_id == 0 or stream_id > self.last_stream_id:
            raise ProtocolError(h2.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        call = self.calls.get(stream_id)
        if call is not None:
            self._spend_reset()
            self._cancel(call)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(h2.FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = int.from_bytes(payload, "big") & h2.MAX_WINDOW
        if stream_id == 0:
            if not increment:
                raise ProtocolError(h2.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > h2.MAX_WINDOW:
                raise ProtocolError(h2.FLOW_CONTROL_ERROR, "connection window overflow")
            for call in list(self.blocked.values()):
                self._flush(call)
            return
        if stream_id > self.last_stream_id:
            raise ProtocolError(h2.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
        call = self.calls.get(stream_id)
        if call is None:
            return  # a closed stream: allowed, nothing to do
        if not increment:
            self._stream_error(call, h2.PROTOCOL_ERROR)
            return
        call.send_window += increment
        if call.send_window > h2.MAX_WINDOW:
            self._stream_error(call, h2.FLOW_CONTROL_ERROR)
        elif stream_id in self.blocked:
            self._flush(call)

    def _on_settings(self, payload: bytes) -> None:
        try:
            settings = h2.parse_settings(payload)
        except ValueError as exc:
            raise ProtocolError(h2.FRAME_SIZE_ERROR, str(exc)) from None
        for key, value in settings:
            if key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > h2.MAX_WINDOW:
                    raise ProtocolError(h2.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_stream_window
                self.peer_stream_window = value
                for call in self.calls.values():
                    call.send_window += delta
                    if call.send_window > h2.MAX_WINDOW:
                        raise ProtocolError(h2.FLOW_CONTROL_ERROR, "stream window overflow")
            elif key == h2.SETTINGS_MAX_FRAME_SIZE:
                if not h2.DEFAULT_MAX_FRAME_BYTES <= value <= 2**24 - 1:
                    raise ProtocolError(h2.PROTOCOL_ERROR, f"max frame size {value}")
                self.peer_max_frame = value
            elif key == h2.SETTINGS_ENABLE_PUSH and value > 1:
                raise ProtocolError(h2.PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
        self._control_reply(h2.frame(h2.SETTINGS, h2.ACK, 0))
        for call in list(self.blocked.values()):
            self._flush(call)

    # -- flood guards and flow-control credit ---------------------------------------------

    def _spend_control(self) -> None:
        if not self.control_frames.spend():
            raise ProtocolError(h2.ENHANCE_YOUR_CALM, "flood of control frames")

    def _police_ping(self) -> None:
        """grpc core's ping-abuse policy: PINGs closer together than allowed, with no
        HEADERS, DATA or WINDOW_UPDATE from us in between, are strikes; past the allowed
        strikes the connection ends with GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"), after
        the PING's ACK (as grpc core writes them)."""
        keepalive = self.keepalive
        if self.data_sent:
            self.data_sent = False
            keepalive.reset_strikes()
        if keepalive.ping_received(self.read_at, bool(self.calls)):
            raise ProtocolError(h2.ENHANCE_YOUR_CALM, "too many pings", TOO_MANY_PINGS)

    def _spend_reset(self) -> None:
        if not self.resets.spend():  # Rapid Reset (CVE-2023-44487)
            raise ProtocolError(h2.ENHANCE_YOUR_CALM, "too many streams reset or refused")

    def _control_reply(self, frame: bytes) -> None:
        """A PING or SETTINGS acknowledgement; a client that keeps asking for them while
        not reading the answers is cut off instead of queued for."""
        if self.writing_paused:
            self.replies_while_paused += 1
            if self.replies_while_paused > MAX_CONTROL_REPLIES_WHILE_PAUSED:
                raise ProtocolError(h2.ENHANCE_YOUR_CALM, "control frames while not reading")
        self._write(frame)

    def _buffer_unary(self, call: H2Call, size: int) -> None:
        """`size` bytes of a unary request arrived. Its message is bounded by its length
        prefix, so the stream's window is refilled at once; the connection's too while the
        connection's partly received unary requests stay within their budget. Past it the
        credit is held back until the message is complete or its call ends, so many streams
        of half-sent messages run the client's connection window down instead of memory up."""
        call.buffered += size
        self.unary_buffered_bytes += size
        if self.unary_buffered_bytes <= self.unary_buffer_limit_bytes:
            self._grant(call, size)
            return
        call.held += size
        self._grant_stream(call, size)

    def _unbuffer(self, call: H2Call) -> None:
        """A unary request is complete, or its call ended: its bytes leave the budget and
        the connection credit held back for it is given back."""
        if call.requests is not None or not call.buffered:
            return
        self.unary_buffered_bytes -= call.buffered
        call.buffered = 0
        self._grant_connection(call.held)
        call.held = 0

    def _hold_request(self, call: H2Call, size: int) -> bool:
        """`size` request bytes of the call are about to be buffered: counted in the server's
        quota, or (False) the call is refused with RESOURCE_EXHAUSTED and its buffered bytes
        released at once. Its later DATA is dropped but credited (RFC 9113 flow control: the
        connection and the client's other calls carry on)."""
        if self.quota.take(size):
            call.quota_bytes += size
            return True
        self._end_now(call, grpc.StatusCode.RESOURCE_EXHAUSTED, self.quota.refuse(self.peer))
        return False

    def _return_quota(self, call: H2Call, size: int) -> None:
        """`size` of the call's counted bytes left the transport (handed to its handler)."""
        size = min(size, call.quota_bytes)  # nothing is given back twice, nor after the end
        call.quota_bytes -= size
        self.quota.give_back(size)

    def _drop_requests(self, call: H2Call) -> None:
        """The call ended: the request bytes still held for it are freed and leave the
        quota, and count towards the next heap trim (app/core/heap_trim.py). (A unary
        message already handed to its handler is not held any more: its body, which the
        handler may still read, stays.)"""
        if not call.quota_bytes:
            return
        if self.loop is not None:
            self.heap_trim.dropped(call.quota_bytes, self.loop)
        self._return_quota(call, call.quota_bytes)
        call.body = bytearray()  # rebound, not cleared: safe even with views still open
        requests = call.requests
        if requests is not None:  # the handler is done or cancelled: it takes no more
            while not requests.empty():
                requests.get_nowait()
            call.queued_bytes = 0

    def _grant(self, call: H2Call, size: int) -> None:
        """`size` bytes of the call's data are consumed: both windows get them back (the
        stream's in batches, and only while the client still sends on it)."""
        if size <= 0:
            return
        self._grant_connection(size)
        self._grant_stream(call, size)

    def _grant_stream(self, call: H2Call, size: int) -> None:
        if call.remote_closed:
            return
        call.granted += size
        if call.granted >= STREAM_WINDOW_BYTES // 4:
            call.receive_window += call.granted
            self.data_sent = True
            self._write(h2.frame(h2.WINDOW_UPDATE, 0, call.stream_id, h2.u32(call.granted)))
            call.granted = 0

    def _grant_connection(self, size: int) -> None:
        self.granted += size
        if self.granted >= CONNECTION_CREDIT_BYTES:
            self.receive_window += self.granted
            self.data_sent = True
            self._write(h2.frame(h2.WINDOW_UPDATE, 0, 0, h2.u32(self.granted)))
            self.granted = 0

    def request_taken(self, call: H2Call, size: int) -> None:
        """A streaming handler took a request message of `size` bytes off its queue."""
        call.queued_bytes -= size
        self._return_quota(call, size)
        if not call.ended:
            self._queue_requests(call)

    def _remember_reset(self, stream_id: int) -> None:
        recent = self.recently_reset
        recent[stream_id] = None
        if len(recent) > RECENTLY_RESET_STREAMS:
            del recent[next(iter(recent))]

    def _reset_stream(self, stream_id: int, code: int) -> None:
        self._remember_reset(stream_id)
        self._write(h2.frame(h2.RST_STREAM, 0, stream_id, h2.u32(code)))

    def _stream_error(self, call: H2Call, code: int) -> None:
        """The client broke HTTP/2 on one stream: that call ends (handler cancelled) and
        the stream is reset with `code`; the connection carries on."""
        self._cancel(call)
        self._reset_stream(call.stream_id, code)


def _strip(flags: int, payload: bytes) -> bytes:
    try:
        return h2.strip_padding(flags, payload)
    except ValueError as exc:
        raise ProtocolError(h2.PROTOCOL_ERROR, str(exc)) from None
