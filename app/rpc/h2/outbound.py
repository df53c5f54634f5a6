"""The outgoing half of a gRPC HTTP/2 connection: each call's reply as frames, and its end.

Data path position: app/rpc/h2/call.py's serve() hands a call's response message and status
to GrpcH2Connection, whose base class OutboundFrames (this module) writes them as HEADERS,
DATA (as far as the client's flow-control windows allow; the rest waits in the call's outbox
until a WINDOW_UPDATE, app/rpc/h2/inbound.py) and trailers, or one trailers-only HEADERS for
an error; then the call is released: its stream, its unconsumed window credit, the request
bytes it still holds in the server's quota and its slot under the server's concurrent call
cap. Deadlines and client resets end calls here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from app.rpc.h2 import frames as h2
from app.rpc.h2.call import H2Call
from app.rpc.h2.replies import DEADLINE_EXCEEDED, RESPONSE_HEADERS, header_frames, status_block

log = logging.getLogger("tfgate.grpc")


class OutboundFrames:
    """Frames to the client, for GrpcH2Connection (which sets the state below up)."""

    if TYPE_CHECKING:  # kept by GrpcH2Connection and InboundFrames
        server: Any  # connection.ConnectionOwner
        transport: asyncio.Transport | None
        loop: asyncio.AbstractEventLoop | None
        calls: dict[int, H2Call]
        blocked: dict[int, H2Call]
        send_window: int
        peer_max_frame: int
        going_away: bool
        idle_since: float
        data_sent: bool

        def _unbuffer(self, call: H2Call) -> None: ...
        def _drop_requests(self, call: H2Call) -> None: ...
        def _grant_connection(self, size: int) -> None: ...
        def _remember_reset(self, stream_id: int) -> None: ...
        def _close_with(self, code: int, *, goaway: bool = True, settings: bool = False,
                        debug: bytes = b"") -> None: ...

    # -- frames out -----------------------------------------------------------------------

    def send_message(self, call: H2Call, body: bytes, *, flush: bool = True) -> None:
        """Queue one response message (after the response headers, the first time); a
        unary reply passes flush=False so its headers, message and trailers leave in one
        write when end_call() follows."""
        if call.ended:
            return
        if not call.headers_sent:
            call.headers_sent = True
            call.head = h2.frame(h2.HEADERS, h2.END_HEADERS, call.stream_id, RESPONSE_HEADERS)
        call.outbox.append(memoryview(b"\x00" + len(body).to_bytes(4, "big") + body))
        if flush:
            self._flush(call)

    def end_call(
        self, call: H2Call, code: grpc.StatusCode, details: str = "",
        trailing: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        """Decide the call's status; the trailers follow whatever data is still queued."""
        if call.ended:
            return
        self._mark_ended(call)
        try:
            call.trailers = status_block(call.headers_sent, code, details, trailing)
        except Exception:  # e.g. trailing metadata that is not str/bytes
            log.exception("gRPC status of stream %d cannot be encoded", call.stream_id)
            call.trailers = status_block(
                call.headers_sent, grpc.StatusCode.UNKNOWN, "Status cannot be encoded", ())
        call.headers_sent = True
        self._flush(call)

    def _flush(self, call: H2Call) -> None:
        """Send the call's queued data as far as the windows allow, then its trailers."""
        transport = self.transport
        if transport is None:
            return
        chunks = []
        if call.head is not None:  # headers are not flow-controlled
            chunks.append(call.head)
            call.head = None
        outbox = call.outbox
        while outbox:
            room = min(len(outbox[0]), self.send_window, call.send_window, self.peer_max_frame)
            if room <= 0:
                self.blocked[call.stream_id] = call
                break
            piece = outbox.popleft()
            if room < len(piece):
                outbox.appendleft(piece[room:])
                piece = piece[:room]
            self.send_window -= room
            call.send_window -= room
            chunks.append(h2.frame(h2.DATA, 0, call.stream_id, piece))
        if not outbox:
            self.blocked.pop(call.stream_id, None)
            if call.writable is not None and not call.writable.done():
                call.writable.set_result(None)
            if call.trailers is not None:
                chunks += header_frames(call.stream_id, call.trailers, self.peer_max_frame)
                if not call.remote_closed:  # the client may stop sending (gRPC's HTTP/2 spec)
                    chunks.append(h2.frame(h2.RST_STREAM, 0, call.stream_id, h2.u32(h2.NO_ERROR)))
                    self._remember_reset(call.stream_id)
                transport.writelines(chunks)
                self.data_sent = True  # HEADERS and DATA: the client's ping strikes reset
                self._release(call)  # after the write: releasing may close the connection
                return
        if chunks:
            transport.writelines(chunks)
            self.data_sent = True

    def _release(self, call: H2Call) -> None:
        self._unbuffer(call)
        self._drop_requests(call)  # request bytes still held leave the server's quota
        if self.calls.pop(call.stream_id, None) is not None:
            self.server.active_calls -= 1
            if not self.calls and self.loop is not None:
                self.idle_since = self.loop.time()
        self.blocked.pop(call.stream_id, None)
        call.outbox.clear()
        # Bytes the client sent that were never consumed still count in the connection's
        # window: given back, or a connection would shrink with every abandoned stream.
        self._grant_connection(call.held)
        call.held = 0
        if call.writable is not None and not call.writable.done():
            call.writable.set_result(None)
        # The context's writer refers back to the call: without this, every call (with its
        # request bytes) would wait for the cyclic garbage collector to be freed.
        call.context = None
        if self.going_away and not self.calls:
            self._close_with(h2.NO_ERROR, goaway=False)
        self.server.call_released()

    def _mark_ended(self, call: H2Call, code: grpc.StatusCode | None = None) -> None:
        call.ended = True
        if call.deadline_timer is not None:
            call.deadline_timer.cancel()
        if call.context is not None:
            call.context.mark_done(code)
        # Nothing reads the call's request bytes any more: they leave the quotas now, not
        # when the reply has been written (a client withholding window credit could hold
        # them for as long as it liked).
        self._unbuffer(call)
        self._drop_requests(call)

    def _end_now(self, call: H2Call, code: grpc.StatusCode, details: str) -> None:
        """The server ends a call whose handler may still run: what was not sent never will
        be, the status goes out, the handler is cancelled."""
        call.outbox.clear()
        self.end_call(call, code, details)
        if call.task is not None:
            call.task.cancel()

    def _deadline_passed(self, call: H2Call) -> None:
        if not call.ended:
            self._end_now(call, grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_EXCEEDED)

    def _cancel(self, call: H2Call) -> None:
        """The client reset the stream or went away: the handler is cancelled, no reply."""
        if not call.ended:
            self._mark_ended(call, grpc.StatusCode.CANCELLED)
        if call.task is not None:
            call.task.cancel()
        self._release(call)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
