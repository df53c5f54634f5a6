"""A blocking raw HTTP/2 client for the adversarial tests: it sends what gRPC clients never
would (floods, bad frames, huge prefixes) and reads the server's frames back.

Only 127.0.0.1. Every read has a timeout; every socket is closed by close() or the context
manager.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import hpack

from app.rpc.h2 import frames as h2


class Frame(NamedTuple):
    kind: int
    flags: int
    stream_id: int
    payload: bytes
    headers: tuple[tuple[str, str], ...] = ()  # decoded, for HEADERS (+ CONTINUATION)


class Response(NamedTuple):
    headers: dict[str, str]
    data: bytes
    trailers: dict[str, str]
    reset: int | None  # RST_STREAM code, if the server reset the stream


def grpc_message(body: bytes, compressed: bool = False) -> bytes:
    return bytes([int(compressed)]) + len(body).to_bytes(4, "big") + body


def request_fields(path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
            ("te", "trailers"), *extra]


def vm_rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RawClient:
    """One HTTP/2 connection, driven frame by frame."""

    def __init__(
        self, port: int, settings: dict[int, int] | None = None, *, preface: bool = True,
        receive_buffer_bytes: int = 0, timeout_seconds: float = 5.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer_bytes:  # before connect: the window scale is fixed then
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        self.timeout_seconds = timeout_seconds
        self.sock.settimeout(timeout_seconds)
        self.sock.connect(("127.0.0.1", port))
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=1 << 20)
        self.pending = bytearray()
        self.closed = False  # the server closed its side
        self.header_block = bytearray()
        self.header_start: tuple[int, int] | None = None
        if preface:
            self.sock.sendall(h2.PREFACE + h2.frame(
                h2.SETTINGS, 0, 0, h2.settings_payload(settings or {})))

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- sending ------------------------------------------------------------------------

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.send_raw(h2.frame(kind, flags, stream_id, payload))

    def send_raw(self, data: bytes) -> None:
        # Reads shorten the socket's timeout to their own deadline; a send gets the full one.
        self.sock.settimeout(self.timeout_seconds)
        self.sock.sendall(data)

    def ping(self, payload: bytes = b"12345678", *, ack: bool = False) -> None:
        self.send(h2.PING, h2.ACK if ack else 0, 0, payload)

    def headers(self, stream_id: int, fields: Sequence[tuple[str, str]], *,
                end_stream: bool = False) -> None:
        flags = h2.END_HEADERS | (h2.END_STREAM if end_stream else 0)
        self.send(h2.HEADERS, flags, stream_id, self.encoder.encode(list(fields)))

    def call(self, stream_id: int, path: str, body: bytes, *extra: tuple[str, str]) -> None:
        """A whole unary request: HEADERS, then one DATA frame with END_STREAM."""
        self.headers(stream_id, request_fields(path, *extra))
        self.send(h2.DATA, h2.END_STREAM, stream_id, grpc_message(body))

    # -- receiving ----------------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on EOF or timeout."""
        if self.closed:
            return False
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except OSError:  # reset by the server
            self.closed = True
            return False
        if not chunk:
            self.closed = True
            return False
        self.pending += chunk
        return True

    def next_frame(self, timeout_seconds: float = 5.0) -> Frame | None:
        """The next frame (header blocks decoded), or None on EOF / timeout."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            if len(self.pending) >= 9:
                length = int.from_bytes(self.pending[:3], "big")
                if len(self.pending) >= 9 + length:
                    raw = bytes(self.pending[: 9 + length])
                    del self.pending[: 9 + length]
                    frame = self._decoded(raw[3], raw[4],
                                          int.from_bytes(raw[5:9], "big") & h2.MAX_WINDOW,
                                          raw[9:])
                    if frame is not None:
                        return frame
                    continue
            if time.monotonic() >= deadline or not self._fill(deadline):
                return None

    def _decoded(self, kind: int, flags: int, stream_id: int, payload: bytes) -> Frame | None:
        if kind == h2.HEADERS:
            payload = h2.strip_padding(flags, payload)
            if flags & h2.PRIORITY:
                payload = payload[5:]
            self.header_block = bytearray(payload)
            self.header_start = (stream_id, flags)
            if not flags & h2.END_HEADERS:
                return None
        elif kind == h2.CONTINUATION:
            self.header_block += payload
            if not flags & h2.END_HEADERS:
                return None
            assert self.header_start is not None
            stream_id, flags = self.header_start
            kind = h2.HEADERS
        else:
            return Frame(kind, flags, stream_id, payload)
        fields = tuple(
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in self.decoder.decode(bytes(self.header_block), raw=True)
        )
        return Frame(h2.HEADERS, flags, stream_id, b"", fields)

    def wait_for(self, match: Callable[[Frame], bool],
                 timeout_seconds: float = 5.0) -> Frame | None:
        deadline = time.monotonic() + timeout_seconds
        while (left := deadline - time.monotonic()) > 0:
            frame = self.next_frame(left)
            if frame is None:
                return None
            if match(frame):
                return frame
        return None

    def goaway_code(self, timeout_seconds: float = 5.0) -> int | None:
        """The error code of the server's GOAWAY (None if none came)."""
        goaway = self.goaway(timeout_seconds)
        return None if goaway is None else goaway[0]

    def goaway(self, timeout_seconds: float = 5.0) -> tuple[int, bytes] | None:
        """The server's GOAWAY as (error code, debug data); None if none came."""
        frame = self.wait_for(lambda f: f.kind == h2.GOAWAY, timeout_seconds)
        if frame is None:
            return None
        return int.from_bytes(frame.payload[4:8], "big"), frame.payload[8:]

    def eof(self, timeout_seconds: float = 5.0) -> bool:
        """True once the server has closed the connection (frames before it are skipped)."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.next_frame(deadline - time.monotonic()) is None and self.closed:
                return True
        return self.closed

    def response(self, stream_id: int, timeout_seconds: float = 10.0) -> Response:
        headers: dict[str, str] = {}
        trailers: dict[str, str] = {}
        data = bytearray()
        deadline = time.monotonic() + timeout_seconds
        while (left := deadline - time.monotonic()) > 0:
            frame = self.next_frame(left)
            if frame is None:
                break
            if frame.kind == h2.SETTINGS and not frame.flags & h2.ACK:
                self.send(h2.SETTINGS, h2.ACK, 0)
            if frame.stream_id != stream_id:
                continue
            if frame.kind == h2.RST_STREAM:
                return Response(headers, bytes(data), trailers,
                                int.from_bytes(frame.payload, "big"))
            if frame.kind == h2.DATA:
                data += h2.strip_padding(frame.flags, frame.payload)
            elif frame.kind == h2.HEADERS:
                target = trailers if headers or "grpc-status" in dict(frame.headers) else headers
                target.update(frame.headers)
            if frame.flags & h2.END_STREAM:
                return Response(headers, bytes(data), trailers, None)
        raise AssertionError(f"no complete response on stream {stream_id}")
