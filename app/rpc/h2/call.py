"""One gRPC call on tfgate's HTTP/2 server: its state, its request messages, its handler.

Data path position: app/rpc/h2/connection.py turns a stream's HEADERS into an H2Call and
its DATA into request bytes; take_messages() cuts those into gRPC messages (5-byte prefix,
gzip/deflate when the client compressed them) and serve() runs the servicer registered for
the call's path (unary or streaming, either direction), handing the response or status back
to the connection to send.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import mmap
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import grpc

from app.rpc.h2.context import CallContext
from app.rpc.h2.limits import (
    INFLATE_CHUNK_BYTES,
    INLINE_INFLATE_BYTES,
    INLINE_INFLATE_OUTPUT_BYTES,
    too_large,
)

log = logging.getLogger("tfgate.grpc")

ACCEPT_ENCODING = "identity,deflate,gzip"
DESERIALIZE_FAILED = "Exception deserializing request!"  # grpc's text
END_OF_REQUESTS = object()  # queued after a streaming call's last request message


class CallWriter(Protocol):
    """What serve() and request_iterator() use of the connection a call arrived on
    (GrpcH2Connection): the connection module builds calls, so this one names the writer
    instead of importing it."""

    message_limit_bytes: int

    def send_message(self, call: H2Call, body: bytes, *, flush: bool = True) -> None: ...

    async def write_message(self, call: H2Call, message: Any) -> None: ...

    def end_call(
        self, call: H2Call, code: grpc.StatusCode, details: str = "",
        trailing: Sequence[tuple[str, str | bytes]] = (),
    ) -> None: ...

    def request_taken(self, call: H2Call, size: int) -> None: ...


class CallFailed(Exception):
    """A call ends with a gRPC status before its handler runs (bad message, bad encoding)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class H2Call:
    """One stream: the request as it arrives, the handler's task, the reply on its way."""

    __slots__ = (
        "body",
        "buffered",
        "context",
        "deadline_timer",
        "encoding",
        "end_queued",
        "ended",
        "expected",
        "granted",
        "handler",
        "head",
        "headers_sent",
        "held",
        "outbox",
        "queued_bytes",
        "quota_bytes",
        "receive_window",
        "remote_closed",
        "requests",
        "send_window",
        "stream_id",
        "task",
        "trailers",
        "writable",
    )

    def __init__(
        self, stream_id: int, send_window: int, receive_window: int, encoding: str
    ) -> None:
        self.stream_id = stream_id
        self.handler: Any = None  # grpc.RpcMethodHandler, once the path is known
        self.encoding = encoding  # grpc-encoding of compressed request messages
        self.body = bytearray()  # request bytes not yet cut into messages
        self.requests: asyncio.Queue[Any] | None = None  # streaming requests only
        self.context: CallContext | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.send_window = send_window
        self.receive_window = receive_window  # bytes the client may still send on it
        self.granted = 0  # consumed bytes not yet given back in a WINDOW_UPDATE
        self.expected = 0  # a unary request's size from its length prefix, once known
        # A unary request's bytes received so far, until its message is complete.
        self.buffered = 0
        # Bytes received but not yet given back as connection window: a streaming request's
        # until its handler takes them (the client must wait for a slow handler), a unary
        # one's past the connection's buffer budget until its message is complete. Then a
        # streaming call's bytes waiting in `requests`, and whether its end is.
        self.held = 0
        self.queued_bytes = 0
        self.end_queued = False
        # Request bytes this call holds in the server's quota (app/rpc/h2/quota.py): a unary
        # call's body until its message is complete; a streaming call's body and queued
        # messages until its handler takes them. Given back, all of it, when the call ends.
        self.quota_bytes = 0
        self.outbox: collections.deque[memoryview] = collections.deque()
        self.trailers: bytes | None = None  # sent once the outbox is empty
        self.headers_sent = False
        self.head: bytes | None = None  # the response headers frame, until written
        self.remote_closed = False
        self.ended = False  # a status is decided: nothing more is written for it
        self.writable: asyncio.Future[None] | None = None  # a streaming writer waiting


Message = tuple[bool, bytes | memoryview]  # (compressed flag, message bytes)


def take_messages(
    data: bytes | bytearray, limit_bytes: int, max_messages: int = -1
) -> tuple[list[Message], int]:
    """The complete gRPC messages (5-byte prefix + body) at the start of `data`, and how many
    bytes they took; CallFailed(RESOURCE_EXHAUSTED) as soon as a prefix declares more than
    `limit_bytes` (before its bytes arrive). Messages are views into `data`, not copies: a
    64 kB tensor is copied once, by the protobuf parser, so `data` must not change while
    they are used. Compressed ones are inflated later, by inflate(). At most `max_messages`
    when it is not negative."""
    view = memoryview(data)
    messages: list[Message] = []
    pos = 0
    while len(data) - pos >= 5 and len(messages) != max_messages:
        length = int.from_bytes(view[pos + 1 : pos + 5], "big")
        if length > limit_bytes:
            raise CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, too_large(length, limit_bytes))
        if len(data) - pos - 5 < length:
            break
        messages.append((bool(data[pos] & 1), view[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return messages, pos


def declared_length(data: bytes | bytearray, limit_bytes: int) -> int:
    """The length the 5-byte prefix at the start of `data` declares (checked as above)."""
    length = int.from_bytes(data[1:5], "big")
    if length > limit_bytes:
        raise CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, too_large(length, limit_bytes))
    return length


async def inflate(
    encoding: str, message: bytes | memoryview, limit_bytes: int
) -> bytes | memoryview:
    """A compressed message, decompressed to at most `limit_bytes`; large ones in a thread
    so a decompression bomb neither stalls the event loop nor grows past the limit."""
    if encoding not in ("gzip", "deflate"):
        if encoding in ("identity", ""):  # gRPC's spec: a protocol violation, INTERNAL
            raise CallFailed(
                grpc.StatusCode.INTERNAL,
                "Compressed message received with grpc-encoding identity (or none)",
            )
        raise CallFailed(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Compression algorithm '{encoding}' is not supported (accepted: {ACCEPT_ENCODING})",
        )
    if len(message) <= INLINE_INFLATE_BYTES:
        # Small input usually means small output: inflated here, unless it grows past a few
        # MiB (a bomb), which starts over in a thread.
        inline_cap = min(limit_bytes, INLINE_INFLATE_OUTPUT_BYTES)
        try:
            return decompress(encoding, message, inline_cap)
        except CallFailed as exc:
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED or inline_cap == limit_bytes:
                raise
    return await asyncio.to_thread(decompress, encoding, bytes(message), limit_bytes)


def decompress(
    encoding: str, message: bytes | memoryview, limit_bytes: int
) -> bytes | memoryview:
    """Inflate in INFLATE_CHUNK_BYTES pieces (zlib runs without the GIL) and stop past
    `limit_bytes`. A large result is assembled piece by piece in an anonymous mapping, not
    joined in one copy: one multi-GiB memcpy would hold the GIL, stalling the event loop as
    if the work had not left it."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    parts: list[bytes] = []
    total = 0
    data: bytes | memoryview = message
    try:
        while not inflater.eof:
            part = inflater.decompress(data, INFLATE_CHUNK_BYTES)
            total += len(part)
            if total > limit_bytes:
                raise CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, too_large(total, limit_bytes))
            parts.append(part)
            data = inflater.unconsumed_tail
            if not data and len(part) < INFLATE_CHUNK_BYTES:
                break  # all input used and no output held back: the stream is cut short
    except zlib.error as exc:
        raise CallFailed(grpc.StatusCode.INTERNAL, f"Failed to decompress message: {exc}") from None
    if not inflater.eof:
        raise CallFailed(grpc.StatusCode.INTERNAL,
                         "Failed to decompress message: incomplete or truncated stream")
    if len(parts) <= 2:
        return b"".join(parts)
    whole = mmap.mmap(-1, total)
    pos = 0
    parts.reverse()
    while parts:  # each piece freed once copied: the peak stays near one copy
        part = parts.pop()
        whole[pos : pos + len(part)] = part
        pos += len(part)
    return memoryview(whole)


async def serve(connection: CallWriter, call: H2Call, payload: Message | None) -> None:
    """Run the call's handler and answer on `connection` with its response (or status).
    `payload` is a unary request's message; streaming requests come from call.requests."""
    handler, context = call.handler, call.context
    assert context is not None
    code, details = grpc.StatusCode.OK, ""
    try:
        if payload is not None:
            compressed, message = payload
            if compressed:
                message = await inflate(call.encoding, message, connection.message_limit_bytes)
            try:
                request: Any = handler.request_deserializer(message)
            except Exception:
                raise CallFailed(grpc.StatusCode.INTERNAL, DESERIALIZE_FAILED) from None
        else:
            request = request_iterator(connection, call)
        if handler.unary_unary is not None or handler.stream_unary is not None:
            behaviour = handler.unary_unary or handler.stream_unary
            response = await behaviour(request, context)
            if context.code() == grpc.StatusCode.OK:
                connection.send_message(
                    call, handler.response_serializer(response), flush=False
                )
        else:
            behaviour = handler.unary_stream or handler.stream_stream
            result = behaviour(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    await connection.write_message(call, response)
            else:
                await result  # writes with context.write()
        code, details = context.code(), context.details()
    except grpc.aio.AbortError:
        code, details = context.code(), context.details()
    except CallFailed as exc:
        code, details = exc.code, exc.details
    except asyncio.CancelledError:
        if call.ended:
            return  # cancelled by the client, its deadline or shutdown: nothing to send
        # Cancelled from elsewhere (the loop shutting down, or the handler's own doing):
        # the call must still end, or it would hold its stream and the call cap.
        connection.end_call(call, grpc.StatusCode.CANCELLED, "Cancelled")
        raise
    except Exception as exc:
        log.exception("gRPC handler for stream %d failed", call.stream_id)
        code, details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}"
    connection.end_call(call, code, details, context.trailing_metadata())


async def request_iterator(connection: CallWriter, call: H2Call) -> AsyncIterator[Any]:
    assert call.requests is not None
    while True:
        item = await call.requests.get()
        if item is END_OF_REQUESTS:
            return
        compressed, message = item
        # Taken by the handler: the stream's window gets these bytes back.
        connection.request_taken(call, 5 + len(message))
        if compressed:
            message = await inflate(call.encoding, message, connection.message_limit_bytes)
        try:
            yield call.handler.request_deserializer(message)
        except Exception:
            raise CallFailed(grpc.StatusCode.INTERNAL, DESERIALIZE_FAILED) from None

