"""A raw asyncio HTTP/2 client for unary gRPC calls: the load generator's default gRPC driver.

Data path position: outside the server, beside bench/loadgen.py's raw HTTP/1.1 driver. The
load generator shares this machine's 2 cores with the server it measures, so every
microsecond it spends is taken from the server. grpc.aio's client spends ~250 us of CPU on a
64-row dnn call (64 kB); this client writes pre-built frames and reads only frame headers
and the status in the trailers, so what it costs per call is mostly the socket writes.

It speaks just enough HTTP/2 (RFC 9113) for one kind of call repeated: SETTINGS and their
ACK (window size, frame size, concurrent stream limit: calls beyond it wait), PING ACK, both
directions of flow control (the request is larger than the default 64 kB window),
HEADERS/CONTINUATION decoded with hpack (header blocks repeat, so decoded blocks are reused
while the peer's dynamic table is unchanged), RST_STREAM (REFUSED_STREAM is retried), and GOAWAY (the streams the server
still answers finish; the connection then closes and the driver opens another).
Request headers are literals that never enter the server's dynamic table, so one encoded
block serves every stream. Responses are not parsed beyond their status: a call succeeds
when its trailers carry grpc-status 0. Framing and header decoding are bench/http2_wire.py's,
written apart from the server's transport (app/rpc/h2/): the server under test and the load
generator share no code, so a framing bug on one side shows up against the other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import struct
from collections.abc import Callable

import grpc
import hpack

from bench.http2_wire import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PING,
    PREFACE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
    HeaderDecoder,
    decode_settings,
    encode_settings,
    frame,
    header_fragment,
)

PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"

# Received DATA is acknowledged to the server in connection-level WINDOW_UPDATEs of at
# least this much, so the replies never stall and the updates stay rare.
WINDOW_UPDATE_BYTES = 1 << 20
MAX_REFUSED_RETRIES = 3
# Error kinds named as the grpc.aio driver names them (grpc_UNAVAILABLE, ...).
STATUS_NAMES = {str(code.value[0]): code.name for code in grpc.StatusCode}

Done = Callable[[int, str | None], None]  # (sent_ns, error kind or None)


def grpc_timeout(seconds: float) -> str:
    """The grpc-timeout header: at most 8 digits, in the finest unit that fits."""
    for unit, per_second in (("m", 1000), ("S", 1), ("M", 1 / 60), ("H", 1 / 3600)):
        value = max(1, math.ceil(seconds * per_second))
        if value < 10**8:
            return f"{value}{unit}"
    return "99999999H"


class _Stream:
    __slots__ = ("body", "done", "retries", "sent_ns", "stream_id", "window")

    def __init__(
        self, stream_id: int, sent_ns: int, done: Done, body: memoryview, window: int,
        retries: int,
    ) -> None:
        self.stream_id = stream_id
        self.sent_ns = sent_ns
        self.done = done
        self.retries = retries  # times the server refused this call's earlier streams
        self.body = body  # what is still to be sent
        self.window = window  # the server's receive window for this stream


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying any number of concurrent unary calls."""

    def __init__(
        self,
        host: str,
        port: int,
        request: bytes,
        timeout_seconds: float = 60.0,
        path: str = PREDICT_PATH,
    ):
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.streams: dict[int, _Stream] = {}
        self.blocked: collections.deque[_Stream] = collections.deque()  # waiting for window
        self.next_stream_id = 1
        self.send_window = DEFAULT_WINDOW  # connection level, grown only by WINDOW_UPDATE
        self.initial_stream_window = DEFAULT_WINDOW
        self.max_frame_bytes = 16_384
        self.unacknowledged_bytes = 0
        self.buffer = bytearray()
        self.header_block = bytearray()  # a HEADERS block waiting for its CONTINUATIONs
        self.header_stream = 0
        self.header_end_stream = False
        self.decoder = HeaderDecoder()
        self.failed: str | None = None
        self.draining = False  # GOAWAY received: no new streams; open ones may finish
        self.max_streams: int | None = None  # SETTINGS_MAX_CONCURRENT_STREAMS, if any
        # calls waiting for a stream: (sent_ns, done, times refused)
        self.waiting: collections.deque[tuple[int, Done, int]] = collections.deque()
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),  # Predict, or V2's ModelInfer
            (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", grpc_timeout(timeout_seconds)),
        ]
        # sensitive=True: "literal never indexed", so the block has no dynamic-table effect.
        self.request_headers = hpack.Encoder().encode([(k, v, True) for k, v in fields])
        self.message = b"\x00" + struct.pack(">I", len(request)) + request

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = encode_settings({SETTINGS_ENABLE_PUSH: 0,
                                    SETTINGS_INITIAL_WINDOW_SIZE: MAX_WINDOW})
        self.transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_all(self.failed or "disconnected")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        end = len(buffer)
        try:
            while end - pos >= 9:
                length = int.from_bytes(buffer[pos : pos + 3], "big")
                if end - pos < 9 + length:
                    break
                kind = buffer[pos + 3]
                flags = buffer[pos + 4]
                stream_id = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & MAX_WINDOW
                payload = bytes(buffer[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._on_frame(kind, flags, stream_id, payload)
        except Exception as exc:  # a frame this client cannot read: the connection is lost
            self.failed = f"protocol_error_{type(exc).__name__}"
            self._fail_all(self.failed)
            if self.transport is not None:
                self.transport.close()
            return
        del buffer[:pos]

    # -- calls --------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether new calls can start here."""
        return self.transport is not None and not self.failed and not self.draining

    def call(self, sent_ns: int, done: Done) -> None:
        """Start one Predict call; done(sent_ns, error) runs when it ends. Beyond the
        server's concurrent stream limit the call waits for a stream to finish."""
        if self.next_stream_id > MAX_WINDOW:
            self.failed = self.failed or "stream_ids_exhausted"
        if not self.usable:
            done(sent_ns, self.failed or ("goaway" if self.draining else "disconnected"))
            return
        if self.max_streams is not None and len(self.streams) >= self.max_streams:
            self.waiting.append((sent_ns, done, 0))
            return
        self._open_stream(sent_ns, done, 0)

    def _open_stream(self, sent_ns: int, done: Done, retries: int) -> None:
        assert self.transport is not None
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        stream = _Stream(stream_id, sent_ns, done, memoryview(self.message),
                         self.initial_stream_window, retries)
        self.streams[stream_id] = stream
        self.transport.write(frame(HEADERS, END_HEADERS, stream_id, self.request_headers))
        self._send_body(stream)

    @property
    def busy(self) -> bool:
        return bool(self.streams or self.waiting)

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
            self.transport.close()

    # -- internals ----------------------------------------------------------------------

    def _send_body(self, stream: _Stream) -> None:
        """Send what the windows allow; a stream still holding data waits in `blocked`."""
        assert self.transport is not None
        chunks = []
        while stream.body:
            room = min(len(stream.body), self.send_window, stream.window, self.max_frame_bytes)
            if room <= 0:
                self.blocked.append(stream)
                break
            piece = stream.body[:room]
            stream.body = stream.body[room:]
            self.send_window -= room
            stream.window -= room
            chunks.append(frame(DATA, 0 if stream.body else END_STREAM, stream.stream_id, piece))
        if chunks:
            self.transport.writelines(chunks)

    def _unblock(self) -> None:
        waiting, self.blocked = self.blocked, collections.deque()
        for stream in waiting:
            if stream.stream_id in self.streams and self.transport is not None:
                self._send_body(stream)

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == DATA:
            self.unacknowledged_bytes += len(payload)
            if self.unacknowledged_bytes >= WINDOW_UPDATE_BYTES and self.transport is not None:
                increment = struct.pack(">I", self.unacknowledged_bytes)
                self.transport.write(frame(WINDOW_UPDATE, 0, 0, increment))
                self.unacknowledged_bytes = 0
            if flags & END_STREAM:  # a reply without trailers is not a gRPC success
                self._finish(stream_id, "no_trailers")
        elif kind == HEADERS:
            self.header_block = bytearray(header_fragment(flags, payload))
            self.header_stream = stream_id
            self.header_end_stream = bool(flags & END_STREAM)
            if flags & END_HEADERS:
                self._on_header_block()
        elif kind == CONTINUATION:
            self.header_block += payload
            if flags & END_HEADERS:
                self._on_header_block()
        elif kind == WINDOW_UPDATE:
            increment = struct.unpack(">I", payload)[0] & MAX_WINDOW
            if stream_id == 0:
                self.send_window += increment
            elif (stream := self.streams.get(stream_id)) is not None:
                stream.window += increment
            if self.blocked:
                self._unblock()
        elif kind == SETTINGS and not flags & ACK:
            self._on_settings(payload)
        elif kind == PING and not flags & ACK and self.transport is not None:
            self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            code = struct.unpack(">I", payload)[0]
            stream = self.streams.get(stream_id)
            if code == REFUSED_STREAM and stream and stream.retries < MAX_REFUSED_RETRIES:
                # Not processed (RFC 9113 section 8.7), as gRPC clients retry it: grpc's
                # server can refuse a stream opened as another one is still closing.
                del self.streams[stream_id]
                self.waiting.appendleft((stream.sent_ns, stream.done, stream.retries + 1))
                if not self.streams:
                    self._start_waiting()
            else:
                self._finish(stream_id, f"rst_stream_{code}")
        elif kind == GOAWAY:
            last_stream_id, code = struct.unpack(">II", payload[:8])
            self._on_goaway(last_stream_id & MAX_WINDOW, code)

    def _on_settings(self, payload: bytes) -> None:
        for key, value in decode_settings(payload):
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self.initial_stream_window
                self.initial_stream_window = value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self.max_frame_bytes = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.max_streams = value
        if self.transport is not None:
            self.transport.write(frame(SETTINGS, ACK, 0))
        if self.blocked:
            self._unblock()
        self._start_waiting()

    def _on_goaway(self, last_stream_id: int, code: int) -> None:
        """Streams up to last_stream_id may still be answered; later ones never will be."""
        self.draining = True
        refused = [sid for sid in self.streams if sid > last_stream_id]
        for sid in refused:
            self._finish(sid, f"goaway_{code}")
        waiting, self.waiting = self.waiting, collections.deque()
        for sent_ns, done, _ in waiting:
            done(sent_ns, f"goaway_{code}")
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.draining and not self.streams and self.transport is not None:
            self.transport.close()

    def _start_waiting(self) -> None:
        while self.waiting and self.usable and (
            self.max_streams is None or len(self.streams) < self.max_streams
        ):
            self._open_stream(*self.waiting.popleft())

    def _on_header_block(self) -> None:
        headers = self.decoder.decode(bytes(self.header_block))
        if not self.header_end_stream:
            return  # the reply's leading headers; the status comes in the trailers
        status = None
        for name, value in headers:
            if name == "grpc-status":
                status = value
                break
        if status == "0":
            self._finish(self.header_stream, None)
        else:
            name = STATUS_NAMES.get(status or "", f"status_{status or 'missing'}")
            self._finish(self.header_stream, f"grpc_{name}")

    def _finish(self, stream_id: int, error: str | None) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.body and self.transport is not None:
            # Answered before its request was all sent: close our half, or the stream
            # would count against the server's limit for good.
            self.transport.write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
            stream.body = memoryview(b"")
        stream.done(stream.sent_ns, error)
        self._start_waiting()
        self._close_if_drained()

    def _fail_all(self, error: str) -> None:
        streams, self.streams = self.streams, {}
        waiting, self.waiting = self.waiting, collections.deque()
        self.blocked.clear()
        for stream in streams.values():
            stream.done(stream.sent_ns, error)
        for sent_ns, done, _ in waiting:
            done(sent_ns, error)
