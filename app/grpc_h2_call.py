"""One gRPC call on tfgate's HTTP/2 server: its state, its request messages, its handler.

Data path position: app/grpc_h2_connection.py turns a stream's HEADERS into an H2Call and
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
import zlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from app.grpc_h2_context import CallContext

if TYPE_CHECKING:
    from app.grpc_h2_connection import GrpcH2Connection

log = logging.getLogger("tfgate.grpc")

ACCEPT_ENCODING = "identity,deflate,gzip"
DESERIALIZE_FAILED = "Exception deserializing request!"  # grpc's text
END_OF_REQUESTS = object()  # queued after a streaming call's last request message


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
        "context",
        "deadline_timer",
        "encoding",
        "ended",
        "handler",
        "head",
        "headers_sent",
        "outbox",
        "receive_credit",
        "remote_closed",
        "requests",
        "send_window",
        "stream_id",
        "task",
        "trailers",
        "writable",
    )

    def __init__(self, stream_id: int, send_window: int, encoding: str) -> None:
        self.stream_id = stream_id
        self.handler: Any = None  # grpc.RpcMethodHandler, once the path is known
        self.encoding = encoding  # grpc-encoding of compressed request messages
        self.body = bytearray()  # request bytes not yet cut into messages
        self.requests: asyncio.Queue[Any] | None = None  # streaming requests only
        self.context: CallContext | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.send_window = send_window
        self.receive_credit = 0  # bytes read since this stream's window was last topped up
        self.outbox: collections.deque[memoryview] = collections.deque()
        self.trailers: bytes | None = None  # sent once the outbox is empty
        self.headers_sent = False
        self.head: bytes | None = None  # the response headers frame, until written
        self.remote_closed = False
        self.ended = False  # a status is decided: nothing more is written for it
        self.writable: asyncio.Future[None] | None = None  # a streaming writer waiting


def take_messages(
    data: bytes | bytearray, encoding: str
) -> tuple[list[bytes | memoryview], int]:
    """The complete gRPC messages (5-byte prefix + body) at the start of `data`, and how many
    bytes they took. Uncompressed messages are views into `data`, not copies: a 64 kB tensor
    is copied once, by the protobuf parser, so `data` must not change while they are used."""
    view = memoryview(data)
    messages: list[bytes | memoryview] = []
    pos = 0
    while len(data) - pos >= 5:
        length = int.from_bytes(view[pos + 1 : pos + 5], "big")
        if len(data) - pos - 5 < length:
            break
        message: bytes | memoryview = view[pos + 5 : pos + 5 + length]
        if data[pos] & 1:
            message = decompress(encoding, bytes(message))
        messages.append(message)
        pos += 5 + length
    return messages, pos


def decompress(encoding: str, message: bytes) -> bytes:
    try:
        if encoding == "gzip":
            return zlib.decompress(message, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return zlib.decompress(message)
    except zlib.error as exc:
        raise CallFailed(grpc.StatusCode.INTERNAL, f"Failed to decompress message: {exc}") from None
    raise CallFailed(
        grpc.StatusCode.UNIMPLEMENTED,
        f"Compression algorithm '{encoding}' is not supported (accepted: {ACCEPT_ENCODING})",
    )


async def serve(
    connection: GrpcH2Connection, call: H2Call, payload: bytes | memoryview | None
) -> None:
    """Run the call's handler and answer on `connection` with its response (or status).
    `payload` is a unary request's message; streaming requests come from call.requests."""
    handler, context = call.handler, call.context
    assert context is not None
    code, details = grpc.StatusCode.OK, ""
    try:
        if payload is not None:
            try:
                request: Any = handler.request_deserializer(payload)
            except Exception:
                raise CallFailed(grpc.StatusCode.INTERNAL, DESERIALIZE_FAILED) from None
        else:
            request = request_iterator(call)
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


async def request_iterator(call: H2Call) -> AsyncIterator[Any]:
    assert call.requests is not None
    while True:
        message = await call.requests.get()
        if message is END_OF_REQUESTS:
            return
        try:
            yield call.handler.request_deserializer(message)
        except Exception:
            raise CallFailed(grpc.StatusCode.INTERNAL, DESERIALIZE_FAILED) from None

