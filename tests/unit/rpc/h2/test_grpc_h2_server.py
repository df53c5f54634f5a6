"""tfgate's own gRPC server (app/rpc/h2/server.py) against real gRPC clients.

Each test starts a GrpcH2Server in this process on 127.0.0.1 port 0 (or a UNIX socket
under tmp_path) with small servicers registered the way app/rpc/server.py registers
tfgate's (generated add_*_to_server() helpers, generic handlers), and calls it with grpc.aio
channels, sync grpc channels run in a thread, or a bare HTTP/2 client (RawClient below) for
what gRPC clients never send: protocol errors, tiny flow-control windows, garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import grpc
import hpack
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from app.core.protos import predict_pb2, prediction_service_pb2_grpc
from app.rpc import server as grpc_server
from app.rpc.h2 import call as grpc_h2_call
from app.rpc.h2 import frames as h2
from app.rpc.h2.server import GrpcH2Server

pytestmark = pytest.mark.timeout(60)

SERVICE = "tfgate.test.Toy"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
# The sizes TF Serving's clients set (server.cc: INT32_MAX), and room for long error texts.
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_metadata_size", 1 << 20),
    ("grpc.absolute_max_metadata_size", 1 << 20),
]
PEER = re.compile(r"ipv4:127\.0\.0\.1:(\d+)")
# Not call metadata: what neither grpc.aio nor tfgate hands a servicer.
TRANSPORT_HEADERS = {
    ":path", ":method", ":scheme", ":authority", "te", "content-type", "grpc-timeout",
    "grpc-encoding", "grpc-accept-encoding",
}


def _pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# --- the servicers ---------------------------------------------------------------------


class Toy:
    """Bytes in, bytes out: one method per behaviour under test. Records what its handlers
    saw (metadata, peer, deadline) and how they ended (finished, cancelled)."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.started = 0
        self.cancelled = 0
        self.finished = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.chat_ended = 0

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        unary = {
            "Echo": self.echo, "Reverse": self.reverse, "Blob": self.blob,
            "Abort": self.abort, "Fail": self.fail, "SetCode": self.set_code,
            "Sleep": self.sleep,
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=bytes, response_serializer=bytes)
            for name, method in unary.items()
        }
        handlers["Count"] = grpc.unary_stream_rpc_method_handler(
            self.count, request_deserializer=bytes, response_serializer=bytes)
        handlers["Chat"] = grpc.stream_stream_rpc_method_handler(
            self.chat, request_deserializer=bytes, response_serializer=bytes)
        # No serializers at all: grpc passes the message bytes through unchanged.
        handlers["Plain"] = grpc.unary_unary_rpc_method_handler(self.reverse)
        return handlers

    async def echo(self, request: bytes, context: Any) -> bytes:
        self.seen = {
            "metadata": context.invocation_metadata(),
            "peer": context.peer(),
            "time_remaining": context.time_remaining(),
        }
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
        finally:
            self.in_flight -= 1
        return request

    async def reverse(self, request: bytes, context: Any) -> bytes:
        return request[::-1]

    async def blob(self, request: bytes, context: Any) -> bytes:
        return _pattern(int(request))

    async def abort(self, request: bytes, context: Any) -> bytes:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            request.decode(),
            trailing_metadata=(("x-why", "because"), ("x-why-bin", b"\x00\x01\xfe\xff")),
        )
        raise AssertionError("abort() returned")

    async def fail(self, request: bytes, context: Any) -> bytes:
        raise ValueError("boom")

    async def set_code(self, request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such thing")
        context.set_trailing_metadata((("x-trail", "t"),))
        return b"not sent"

    async def sleep(self, request: bytes, context: Any) -> bytes:
        self.seen["time_remaining"] = context.time_remaining()
        self.started += 1
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return b"slept"

    async def count(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i

    async def chat(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self.started += 1
        try:
            async for request in requests:
                yield request[::-1]
        finally:
            self.chat_ended += 1


class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's Predict, answering with the model name it was asked for."""

    def __init__(self) -> None:
        self.metadata: Any = None

    async def Predict(self, request: Any, context: Any) -> Any:
        self.metadata = context.invocation_metadata()
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name[::-1]
        return response


class Served(NamedTuple):
    server: GrpcH2Server
    toy: Toy
    health: Any
    prediction: Prediction
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def method(self, channel: Any, name: str) -> Any:
        return channel.unary_unary(f"/{SERVICE}/{name}")


async def start_server(
    *, max_concurrent_calls: int | None = None, address: str = "127.0.0.1:0"
) -> Served:
    server = GrpcH2Server(max_concurrent_calls=max_concurrent_calls)
    toy = Toy()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, toy.handlers()),))
    prediction = Prediction()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            [SERVICE, PREDICTION_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME]),
        server,
    )
    await server.listen(address, None)
    port = 0
    if not address.startswith("unix:"):
        port = server.listeners[0].sockets[0].getsockname()[1]
    return Served(server, toy, health_servicer, prediction, port)


def serve_tasks() -> list[asyncio.Task[Any]]:
    """The server's handler tasks still alive (app/rpc/h2/call.serve)."""
    return [
        task for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "cr_code", None)
        is grpc_h2_call.serve.__code__
    ]


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s = await start_server()
    yield s
    await s.server.stop(0)
    # Handler tasks a bug left behind would be destroyed pending with the loop: end them.
    for task in serve_tasks():
        task.cancel()
    await asyncio.sleep(0.01)


@pytest.fixture
async def channel(served: Served) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(served.target, options=CLIENT_OPTIONS) as ch:
        yield ch


# --- a bare HTTP/2 client --------------------------------------------------------------


def grpc_message(body: bytes, compressed: bool = False) -> bytes:
    return bytes([compressed]) + len(body).to_bytes(4, "big") + body


class Frame(NamedTuple):
    kind: int
    flags: int
    stream_id: int
    payload: bytes


class Response(NamedTuple):
    headers: list[tuple[str, str]]
    data: bytes
    trailers: dict[str, str]
    data_frames: list[int]  # sizes
    header_frames: list[Frame]  # HEADERS / CONTINUATION frames of the last header block


class RawClient:
    """HTTP/2 frames as bytes over a TCP connection (asyncio streams)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=h2.MAX_HEADER_LIST_BYTES)
        self.other: list[Frame] = []  # connection frames read while waiting for a stream

    @classmethod
    async def connect(
        cls, port: int, settings: dict[int, int] | None = None, *,
        connection_window: bool = True,
    ) -> RawClient:
        """Preface, SETTINGS (by default: 1 GB stream windows), and unless told not to a
        connection window of 1 GB."""
        if settings is None:
            settings = {h2.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 30}
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(h2.PREFACE)
        client.send(h2.SETTINGS, 0, 0, h2.settings_payload(settings))
        if connection_window:
            client.send(h2.WINDOW_UPDATE, 0, 0, h2.u32(1 << 30))
        return client

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.writer.write(h2.frame(kind, flags, stream_id, payload))

    def request(
        self, stream_id: int, method: str, message: bytes | None = None, *,
        end: bool = True, extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        fields = [
            (":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/{method}"),
            (":authority", "test"), ("content-type", "application/grpc"), ("te", "trailers"),
            *extra,
        ]
        flags = h2.END_HEADERS | (h2.END_STREAM if message is None and end else 0)
        self.send(h2.HEADERS, flags, stream_id, self.encoder.encode(fields))
        if message is not None:
            self.send(h2.DATA, h2.END_STREAM if end else 0, stream_id, grpc_message(message))

    async def frame(self, timeout: float = 5.0) -> Frame:
        header = await asyncio.wait_for(self.reader.readexactly(9), timeout)
        length = int.from_bytes(header[:3], "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        stream_id = int.from_bytes(header[5:9], "big") & h2.MAX_WINDOW
        return Frame(header[3], header[4], stream_id, payload)

    async def frames_until_quiet(self, quiet: float = 0.3) -> list[Frame]:
        frames = []
        with contextlib.suppress(TimeoutError):
            while True:
                frames.append(await self.frame(timeout=quiet))
        return frames

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        return [(k.decode(), v.decode()) for k, v in self.decoder.decode(block, raw=True)]

    async def response(self, stream_id: int, timeout: float = 5.0) -> Response:
        """Frames until the stream's END_STREAM (or RST_STREAM)."""
        headers: list[tuple[str, str]] = []
        trailers: dict[str, str] = {}
        data = bytearray()
        sizes: list[int] = []
        block_frames: list[Frame] = []
        block = bytearray()
        while True:
            frame = await self.frame(timeout)
            if frame.stream_id != stream_id:
                self.other.append(frame)
                continue
            if frame.kind == h2.DATA:
                data += frame.payload
                sizes.append(len(frame.payload))
            elif frame.kind in (h2.HEADERS, h2.CONTINUATION):
                if frame.kind == h2.HEADERS:
                    block_frames, block = [], bytearray()
                block_frames.append(frame)
                block += frame.payload
                if frame.flags & h2.END_HEADERS:
                    fields = self.decode(bytes(block))
                    if block_frames[0].flags & h2.END_STREAM:
                        trailers = dict(fields)
                    else:
                        headers = fields
            elif frame.kind == h2.RST_STREAM:
                return Response(headers, bytes(data), trailers, sizes, block_frames)
            if trailers:
                return Response(headers, bytes(data), trailers, sizes, block_frames)

    async def closed(self, timeout: float = 3.0) -> bool:
        """True when the server closes the connection within `timeout` (frames before that,
        such as GOAWAY, are kept in self.other)."""
        try:
            while True:
                self.other.append(await self.frame(timeout))
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


def goaway_codes(frames: list[Frame]) -> list[int]:
    return [int.from_bytes(f.payload[4:8], "big") for f in frames if f.kind == h2.GOAWAY]


# --- 1. unary calls, metadata, peer ------------------------------------------------------

CALL_METADATA = (
    ("x-text", "hello"), ("x-blob-bin", b"\x00\x01\x80\xff=="), ("x-text", "again"),
    ("cache-control", "no-cache"),
)


async def test_unary_metadata_reaches_the_servicer_as_grpc_aio_presents_it(
    served: Served, channel: grpc.aio.Channel
) -> None:
    echo = served.method(channel, "Echo")
    assert await echo(b"ping", metadata=CALL_METADATA, timeout=10) == b"ping"
    seen = served.toy.seen

    metadata = seen["metadata"]
    assert ("x-blob-bin", b"\x00\x01\x80\xff==") in metadata  # base64 decoded to bytes
    assert [v for k, v in metadata if k == "x-text"] == ["hello", "again"]  # order kept
    assert ("cache-control", "no-cache") in metadata
    user_agents = [v for k, v in metadata if k == "user-agent"]
    assert len(user_agents) == 1 and user_agents[0].startswith("grpc-python-asyncio/")
    assert not {k for k, _ in metadata} & TRANSPORT_HEADERS
    assert all(isinstance(v, bytes) == k.endswith("-bin") for k, v in metadata)

    match = PEER.fullmatch(seen["peer"])
    assert match and int(match.group(1)) not in (0, served.port)
    # grpc core encodes a timeout rounded up to 3 digits (Timeout::FromMillis): a deadline
    # a millisecond past 10 s goes out as "101" hundred-ms units, 10.1 s
    assert 9.0 < seen["time_remaining"] <= 10.1

    # The very same call on a grpc.aio server: the servicer sees the same tuple.
    reference = grpc.aio.server()
    toy = Toy()
    reference.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, toy.handlers()),))
    port = reference.add_insecure_port("127.0.0.1:0")
    await reference.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as other:
            await other.unary_unary(f"/{SERVICE}/Echo")(b"ping", metadata=CALL_METADATA)
    finally:
        await reference.stop(None)
    assert tuple(metadata) == tuple(toy.seen["metadata"])
    assert PEER.fullmatch(toy.seen["peer"])
    # Without a deadline both say None.
    await echo(b"again")
    assert served.toy.seen["time_remaining"] is None


async def test_sync_client_in_a_thread_with_tf_serving_stub(served: Served) -> None:
    def predict() -> tuple[str, Any]:
        with grpc.insecure_channel(served.target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "half_plus_two"
            response, call = stub.Predict.with_call(
                request, metadata=(("authorization", "Bearer t"), ("k-bin", b"\xff")),
                timeout=10)
            return response.model_spec.name, call.code()

    name, code = await asyncio.to_thread(predict)
    assert (name, code) == ("owt_sulp_flah", grpc.StatusCode.OK)
    metadata = dict(served.prediction.metadata)
    assert metadata["authorization"] == "Bearer t"
    assert metadata["k-bin"] == b"\xff"
    assert metadata["user-agent"].startswith("grpc-python/")


# --- 2. big messages, many calls ---------------------------------------------------------

BIG = 5 << 20


async def test_five_megabytes_each_way_aio(served: Served, channel: grpc.aio.Channel) -> None:
    request = os.urandom(BIG)
    reverse = served.method(channel, "Reverse")
    for _ in range(2):  # the second on windows the first moved
        assert await reverse(request, timeout=20) == request[::-1]
    assert served.server.active_calls == 0


async def test_five_megabytes_each_way_sync_client(served: Served) -> None:
    request = os.urandom(BIG)

    def call() -> bytes:
        with grpc.insecure_channel(served.target, options=CLIENT_OPTIONS) as ch:
            return ch.unary_unary(f"/{SERVICE}/Reverse")(request, timeout=20)

    assert await asyncio.to_thread(call) == request[::-1]


async def test_a_finished_call_leaves_no_reference_cycle(
    served: Served, channel: grpc.aio.Channel
) -> None:
    """A call (and the request bytes it holds) is freed when it ends, not at the next run of
    the cyclic garbage collector: the gateway tunes that collector to run rarely."""
    echo = served.method(channel, "Echo")
    await echo(b"warm", timeout=10)
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            assert await echo(b"x" * 1000, timeout=10) == b"x" * 1000
        await wait_until(lambda: served.server.active_calls == 0)
        assert not [o for o in gc.get_objects() if isinstance(o, grpc_h2_call.H2Call)]
    finally:
        gc.enable()


async def test_200_concurrent_calls_on_one_channel(
    served: Served, channel: grpc.aio.Channel
) -> None:
    echo = served.method(channel, "Echo")
    requests = [b"%d:" % i + _pattern(i * 97 % 70_000) for i in range(200)]
    responses = await asyncio.gather(*(echo(r, timeout=20) for r in requests))
    assert responses == requests
    assert served.toy.max_in_flight > 1  # they did overlap on the server
    assert served.server.active_calls == 0
    assert await wait_until(lambda: not serve_tasks())


# --- 3. abort, long and non-ASCII status messages ----------------------------------------

ODD_TEXT = "ünïcødé 100% ☃ tab\tnewline\n%41 " * 250  # ~8 kB, ~22 kB percent-encoded


async def test_abort_code_details_and_trailing_metadata(
    served: Served, channel: grpc.aio.Channel
) -> None:
    call = served.method(channel, "Abort")(ODD_TEXT.encode(), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == ODD_TEXT
    trailing = tuple(await call.trailing_metadata())
    assert ("x-why", "because") in trailing
    assert ("x-why-bin", b"\x00\x01\xfe\xff") in trailing


async def test_abort_details_reach_a_sync_client(served: Served) -> None:
    def call() -> tuple[grpc.StatusCode, str]:
        with grpc.insecure_channel(served.target, options=CLIENT_OPTIONS) as ch:
            try:
                ch.unary_unary(f"/{SERVICE}/Abort")(ODD_TEXT.encode(), timeout=10)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
        raise AssertionError("no error")

    assert await asyncio.to_thread(call) == (grpc.StatusCode.FAILED_PRECONDITION, ODD_TEXT)


async def test_long_trailers_go_out_as_continuation_frames(served: Served) -> None:
    # Beyond the client's 16 kB frame size once hpack-encoded; mostly ASCII, so the
    # encoding stays cheap (huffman off), with what must be percent-encoded.
    text = "a long status text " * 1800 + "ü%☃\x7f"
    client = await RawClient.connect(served.port)
    client.request(1, "Abort", text.encode())
    response = await client.response(1)
    client.close()
    kinds = [f.kind for f in response.header_frames]
    assert kinds[0] == h2.HEADERS and set(kinds[1:]) == {h2.CONTINUATION} and len(kinds) > 1
    assert all(len(f.payload) <= h2.DEFAULT_MAX_FRAME_BYTES for f in response.header_frames)
    assert [bool(f.flags & h2.END_HEADERS) for f in response.header_frames][-1]
    assert not any(f.flags & h2.END_HEADERS for f in response.header_frames[:-1])
    trailers = response.trailers
    assert trailers["grpc-status"] == str(grpc.StatusCode.FAILED_PRECONDITION.value[0])
    assert trailers["grpc-message"].isascii()
    assert urllib.parse.unquote(trailers["grpc-message"], errors="strict") == text
    assert trailers["x-why-bin"] == "AAH+/w"  # base64 without padding


async def test_a_long_status_text_does_not_stall_the_event_loop(
    served: Served, channel: grpc.aio.Channel
) -> None:
    text = ("ünïcødé 100% ☃ " * 3000)[:40_000]
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served.method(channel, "Abort")(text.encode(), timeout=30)
    finally:
        ticking.cancel()
    assert info.value.details() == text
    assert max(gaps) < 0.5


# --- 4. unknown methods, handler errors, set_code ----------------------------------------


async def test_unknown_method_is_unimplemented(
    served: Served, channel: grpc.aio.Channel
) -> None:
    for path in (f"/{SERVICE}/Nope", "/no.such.Service/Echo", "/"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(path)(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert info.value.details() == "Method not found!"
    assert served.server.active_calls == 0


async def test_a_failing_handler_is_unknown(
    served: Served, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.method(channel, "Fail")(b"x", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "Unexpected <class 'ValueError'>: boom"  # grpc.aio's text
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)
    # The connection is fine afterwards.
    assert await served.method(channel, "Echo")(b"ok", timeout=5) == b"ok"


async def test_set_code_and_set_details_are_the_status(
    served: Served, channel: grpc.aio.Channel
) -> None:
    call = served.method(channel, "SetCode")(b"x", timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such thing"
    assert ("x-trail", "t") in tuple(await call.trailing_metadata())


async def test_a_handler_without_serializers_gets_and_returns_bytes(
    served: Served, channel: grpc.aio.Channel
) -> None:
    assert await served.method(channel, "Plain")(b"abc", timeout=5) == b"cba"


# --- 5. deadlines ------------------------------------------------------------------------


async def test_deadline_exceeded_cancels_the_handler(
    served: Served, channel: grpc.aio.Channel
) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.method(channel, "Sleep")(b"30", timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    assert await wait_until(lambda: served.toy.cancelled == 1)
    assert served.toy.finished == 0
    assert 0.3 < served.toy.seen["time_remaining"] <= 0.6  # grpc-timeout is rounded up
    assert await wait_until(lambda: served.server.active_calls == 0 and not serve_tasks())


async def test_the_server_enforces_grpc_timeout_itself(served: Served) -> None:
    """No client-side deadline here: the status comes from the server's timer."""
    client = await RawClient.connect(served.port)
    client.request(1, "Sleep", b"30", extra=(("grpc-timeout", "200m"),))
    started = time.monotonic()
    response = await client.response(1)
    assert 0.15 < time.monotonic() - started < 2
    assert response.trailers["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    assert response.trailers["grpc-message"] == "Deadline Exceeded"
    assert await wait_until(lambda: served.toy.cancelled == 1)
    # The same connection carries the next call.
    client.request(3, "Echo", b"next")
    response = await client.response(3)
    assert response.data == grpc_message(b"next")
    assert response.trailers["grpc-status"] == "0"
    client.close()


# --- 6. client cancellation --------------------------------------------------------------


async def test_client_cancel_cancels_the_handler(
    served: Served, channel: grpc.aio.Channel
) -> None:
    call = served.method(channel, "Sleep")(b"30", timeout=20)
    assert await wait_until(lambda: served.toy.started == 1)
    assert served.server.active_calls == 1
    assert len(serve_tasks()) == 1  # (what the other tests' "no task left" checks look for)
    call.cancel()
    assert await wait_until(lambda: served.toy.cancelled == 1)
    assert await wait_until(lambda: served.server.active_calls == 0 and not serve_tasks())
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert await served.method(channel, "Echo")(b"after", timeout=5) == b"after"


# --- 7. compressed requests --------------------------------------------------------------


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
async def test_compressed_requests_decode(
    served: Served, monkeypatch: pytest.MonkeyPatch, compression: grpc.Compression
) -> None:
    encodings: list[str] = []
    decompress = grpc_h2_call.decompress

    def spy(encoding: str, message: bytes, *limit: int) -> bytes:
        encodings.append(encoding)
        return decompress(encoding, message, *limit)

    monkeypatch.setattr(grpc_h2_call, "decompress", spy)
    request = b"compress me " * 50_000 + os.urandom(1000)
    async with grpc.aio.insecure_channel(
        served.target, options=CLIENT_OPTIONS, compression=compression
    ) as ch:
        assert await served.method(ch, "Reverse")(request, timeout=10) == request[::-1]
        # grpc sends a message that does not shrink uncompressed (flag 0), same header.
        assert await served.method(ch, "Echo")(b"tiny", timeout=10) == b"tiny"
    expected = "gzip" if compression == grpc.Compression.Gzip else "deflate"
    assert encodings[:1] == [expected] and set(encodings) == {expected}
    assert "grpc-encoding" not in dict(served.toy.seen["metadata"])


async def test_an_unsupported_or_broken_compressed_message_is_a_status(served: Served) -> None:
    client = await RawClient.connect(served.port)
    body = grpc_message(b"not snappy at all", compressed=True)
    client.send(h2.HEADERS, h2.END_HEADERS, 1, client.encoder.encode([
        (":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Echo"),
        (":authority", "t"), ("content-type", "application/grpc"), ("grpc-encoding", "snappy"),
    ]))
    client.send(h2.DATA, h2.END_STREAM, 1, body)
    response = await client.response(1)
    assert response.trailers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    client.send(h2.HEADERS, h2.END_HEADERS, 3, client.encoder.encode([
        (":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Echo"),
        (":authority", "t"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip"),
    ]))
    client.send(h2.DATA, h2.END_STREAM, 3, body)
    response = await client.response(3)
    assert response.trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    client.close()
    assert served.server.active_calls == 0


async def test_a_bad_message_mid_stream_ends_the_streaming_handler(served: Served) -> None:
    client = await RawClient.connect(served.port)
    client.send(h2.HEADERS, h2.END_HEADERS, 1, client.encoder.encode([
        (":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Chat"),
        (":authority", "t"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip"),
    ]))
    client.send(h2.DATA, 0, 1, grpc_message(b"not gzip", compressed=True))  # stream open
    response = await client.response(1)
    assert response.trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert served.server.active_calls == 0
    assert await wait_until(lambda: not serve_tasks(), 1.0)
    assert served.toy.chat_ended == served.toy.started  # if it started, it ended
    client.close()


# --- 8. streaming: health Watch, async generators, reflection ----------------------------


async def test_health_check_and_watch_stream_updates(
    served: Served, channel: grpc.aio.Channel
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)
    await served.health.set("svc", serving)
    check = await stub.Check(health_pb2.HealthCheckRequest(service="svc"), timeout=5)
    assert check.status == serving
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    watch = stub.Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=10)
    assert (await watch.read()).status == serving
    await served.health.set("svc", not_serving)
    assert (await watch.read()).status == not_serving
    await served.health.set("svc", serving)
    assert (await watch.read()).status == serving
    watch.cancel()
    # The servicer's Watch ended (its finally dropped the watcher).
    assert await wait_until(lambda: "svc" not in served.health._server_watchers)
    assert await wait_until(lambda: served.server.active_calls == 0 and not serve_tasks())


async def test_async_generator_streams_aio_and_sync(
    served: Served, channel: grpc.aio.Channel
) -> None:
    count = channel.unary_stream(f"/{SERVICE}/Count")
    assert [m async for m in count(b"500", timeout=10)] == [b"%d" % i for i in range(500)]
    assert [m async for m in count(b"0", timeout=10)] == []

    def sync_count() -> list[bytes]:
        with grpc.insecure_channel(served.target) as ch:
            return list(ch.unary_stream(f"/{SERVICE}/Count")(b"20", timeout=10))

    assert await asyncio.to_thread(sync_count) == [b"%d" % i for i in range(20)]


async def test_stream_stream_chat_in_both_directions(
    served: Served, channel: grpc.aio.Channel
) -> None:
    chat = channel.stream_stream(f"/{SERVICE}/Chat")(timeout=10)
    for word in (b"abc", _pattern(300_000), b""):
        await chat.write(word)
        assert await chat.read() == word[::-1]
    await chat.done_writing()
    assert await chat.read() == grpc.aio.EOF
    assert await chat.code() == grpc.StatusCode.OK
    assert await wait_until(lambda: served.toy.chat_ended == 1)


async def test_reflection_lists_services_and_files(
    served: Served, channel: grpc.aio.Channel
) -> None:
    def with_sync_client() -> tuple[list[str], str]:
        with grpc.insecure_channel(served.target) as ch:
            database = ProtoReflectionDescriptorDatabase(ch)
            services = list(database.get_services())
            file = database.FindFileContainingSymbol(HEALTH_SERVICE)
            return services, file.name

    services, file_name = await asyncio.to_thread(with_sync_client)
    assert sorted(services) == sorted(
        [SERVICE, PREDICTION_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME])
    assert file_name == health_pb2.DESCRIPTOR.name

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=HEALTH_SERVICE),
        reflection_pb2.ServerReflectionRequest(file_by_filename="no/such.proto"),
    ]
    answers = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=10)]
    assert len(answers) == 3
    assert {s.name for s in answers[0].list_services_response.service} == set(services)
    assert answers[1].file_descriptor_response.file_descriptor_proto
    assert answers[2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


# --- 9. the concurrent call cap ----------------------------------------------------------


async def test_max_concurrent_calls() -> None:
    s = await start_server(max_concurrent_calls=2)
    try:
        async with grpc.aio.insecure_channel(s.target) as ch:
            sleep = s.method(ch, "Sleep")
            calls = [sleep(b"0.5", timeout=10) for _ in range(5)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            ok = [r for r in results if r == b"slept"]
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(ok) == 2 and len(refused) == 3
            for error in refused:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert error.details() == "Concurrent RPC limit exceeded!"
            assert s.toy.started == 2
            assert s.server.active_calls == 0
            # Once the slow ones are done the cap has room again.
            assert await asyncio.gather(sleep(b"0", timeout=5), sleep(b"0", timeout=5)) == [
                b"slept", b"slept"]
    finally:
        await s.server.stop(0)


# --- 10. stop(grace) ---------------------------------------------------------------------


async def test_stop_waits_for_an_in_flight_call_then_refuses_connections() -> None:
    s = await start_server()
    async with grpc.aio.insecure_channel(s.target) as ch:
        call = s.method(ch, "Sleep")(b"0.4", timeout=10)
        assert await wait_until(lambda: s.toy.started == 1)
        started = time.monotonic()
        await s.server.stop(5)
        assert 0.2 < time.monotonic() - started < 2  # returned once the call was done
        assert s.toy.finished == 1 and s.toy.cancelled == 0
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call  # its answer
        # The old channel cannot start new calls.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.method(ch, "Echo")(b"x", timeout=2)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
    async with grpc.aio.insecure_channel(s.target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.method(ch, "Echo")(b"x", timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not s.server.connections and s.server.active_calls == 0
    assert not serve_tasks()


async def test_stop_delivers_the_answer_of_a_call_that_ends_within_the_grace() -> None:
    s = await start_server()
    try:
        async with grpc.aio.insecure_channel(s.target) as ch:
            call = s.method(ch, "Sleep")(b"0.3", timeout=10)
            assert await wait_until(lambda: s.toy.started == 1)
            await s.server.stop(5)
            assert await call == b"slept"
    finally:
        await s.server.stop(0)


async def test_stop_ends_a_call_that_outlives_the_grace_period() -> None:
    s = await start_server()
    async with grpc.aio.insecure_channel(s.target) as ch:
        call = s.method(ch, "Sleep")(b"30", timeout=20)
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        assert await wait_until(lambda: s.toy.started == 1)
        started = time.monotonic()
        await s.server.stop(0.3)
        assert 0.25 < time.monotonic() - started < 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call, 3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.wait_for(watch.code(), 3) == grpc.StatusCode.UNAVAILABLE
    assert await wait_until(lambda: s.toy.cancelled == 1 and not serve_tasks())
    assert not s.health._server_watchers  # Watch's finally ran
    assert not s.server.connections and s.server.active_calls == 0


async def test_stop_with_a_raw_client_sends_goaway_and_refuses_new_streams() -> None:
    s = await start_server()
    client = await RawClient.connect(s.port)
    client.request(1, "Sleep", b"0.3")
    assert await wait_until(lambda: s.toy.started == 1)
    stopping = asyncio.create_task(s.server.stop(5))
    await asyncio.sleep(0.05)
    client.request(3, "Echo", b"late")  # after GOAWAY: refused, never run
    assert await client.closed()  # once stream 1 is done
    await stopping
    client.close()
    frames = client.other
    goaways = [f for f in frames if f.kind == h2.GOAWAY]
    assert len(goaways) == 1
    assert int.from_bytes(goaways[0].payload[:4], "big") == 1  # last stream it will serve
    assert goaway_codes(frames) == [h2.NO_ERROR]
    refused = [f for f in frames if f.kind == h2.RST_STREAM and f.stream_id == 3]
    assert refused and int.from_bytes(refused[0].payload, "big") == h2.REFUSED_STREAM
    assert (s.toy.started, s.toy.finished, s.toy.cancelled) == (1, 1, 0)


# --- 11. garbage -------------------------------------------------------------------------


async def test_garbage_and_http1_are_dropped_quietly(
    served: Served, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tfgate.grpc")
    echo = served.method(channel, "Echo")
    assert await echo(b"before", timeout=5) == b"before"
    for junk in (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200),  # a TLS hello
        os.urandom(4096),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(junk)
        try:
            data = await asyncio.wait_for(reader.read(), 3)  # until the server closes
        except ConnectionResetError:  # closed with some of the junk unread: fine too
            data = b""
        writer.close()
        assert not data or data[3] == h2.SETTINGS  # the server's greeting, then it closed
        assert await echo(b"still serving", timeout=5) == b"still serving"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("preface" in r.getMessage() for r in caplog.records)  # logged, at DEBUG
    assert len(served.server.connections) == 1  # the channel's


async def test_a_short_non_http2_greeting_is_refused_at_once(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    try:
        await asyncio.wait_for(reader.read(), 1.5)  # the server closes it
    finally:
        writer.close()


async def test_a_malformed_header_block_ends_the_connection_quietly(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    client = await RawClient.connect(served.port)
    client.send(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, b"\xff\xff\xff\xff\x7f")
    assert await client.closed()
    client.close()
    assert goaway_codes(client.other) == [0x9]  # COMPRESSION_ERROR
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_header_block_without_end_is_bounded(served: Served) -> None:
    client = await RawClient.connect(served.port)
    client.send(h2.HEADERS, 0, 1, client.encoder.encode([(":method", "POST")]))
    chunk = b"\x00" * (1 << 20)
    for _ in range(24):  # 24 MB: beyond the 16 MB header list hpack would accept
        client.send(h2.CONTINUATION, 0, 1, chunk)
        with contextlib.suppress(ConnectionError):
            await client.writer.drain()
    assert await client.closed(timeout=1.5)
    client.close()


async def test_unknown_paths_do_not_grow_the_registry(
    served: Served, channel: grpc.aio.Channel
) -> None:
    before = len(served.server.registry._handlers)
    for i in range(50):
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{SERVICE}/Missing{i}")(b"x", timeout=5)
    assert len(served.server.registry._handlers) <= before + 1


# --- 12. UNIX socket ---------------------------------------------------------------------


async def test_unix_socket(tmp_path: Any) -> None:
    path = tmp_path / "grpc.sock"
    path_text = str(path)
    # A socket file left behind by a killed server does not stop the next one.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path_text)
    stale.close()
    s = await start_server(address=f"unix:{path_text}")
    try:
        async with grpc.aio.insecure_channel(f"unix:{path_text}") as ch:
            assert await s.method(ch, "Reverse")(b"abc", timeout=5) == b"cba"
            assert await s.method(ch, "Echo")(b"x", metadata=(("k", "v"),), timeout=5) == b"x"
        assert s.toy.seen["peer"].startswith("unix:")
        assert ("k", "v") in s.toy.seen["metadata"]

        def sync_call() -> bytes:
            with grpc.insecure_channel(f"unix:{path_text}") as ch:
                return ch.unary_unary(f"/{SERVICE}/Reverse")(b"xyz", timeout=5)

        assert await asyncio.to_thread(sync_call) == b"zyx"
    finally:
        await s.server.stop(0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_tls_with_the_gateways_ssl_context(tmp_path: Any) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", "key.pem", "-out", "cert.pem"],
        cwd=tmp_path, check=True, capture_output=True,
    )
    cert = (tmp_path / "cert.pem").read_text()
    key = (tmp_path / "key.pem").read_text()
    config = tmp_path / "ssl.config"
    config.write_text(f"server_key: {key!r}\nserver_cert: {cert!r}\n".replace("'", '"'))
    server = GrpcH2Server()
    toy = Toy()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, toy.handlers()),))
    await server.listen("127.0.0.1:0", grpc_server.server_ssl_context(str(config)))
    port = server.listeners[0].sockets[0].getsockname()[1]
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.encode())
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", credentials, options=CLIENT_OPTIONS
        ) as ch:
            request = os.urandom(BIG)
            assert await ch.unary_unary(f"/{SERVICE}/Reverse")(request, timeout=20) == (
                request[::-1])
            await ch.unary_unary(f"/{SERVICE}/Echo")(b"x", timeout=5)
        assert PEER.fullmatch(toy.seen["peer"])
        # A plaintext client is refused, and the server goes on.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await plain.unary_unary(f"/{SERVICE}/Echo")(b"x", timeout=2)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                         grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await server.stop(0)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 on this machine")
async def test_a_wildcard_ipv6_listener_also_takes_ipv4_clients() -> None:
    s = await start_server(address="[::]:0")
    port = s.server.listeners[0].sockets[0].getsockname()[1]
    try:
        for target in (f"[::1]:{port}", f"127.0.0.1:{port}"):
            async with grpc.aio.insecure_channel(target) as ch:
                assert await s.method(ch, "Reverse")(b"abc", timeout=2) == b"cba"
    finally:
        await s.server.stop(0)


# --- raw HTTP/2 protocol -----------------------------------------------------------------


async def test_settings_and_ping_are_acknowledged(served: Served) -> None:
    client = await RawClient.connect(served.port)
    first = await client.frame()
    assert first.kind == h2.SETTINGS and not first.flags & h2.ACK
    settings = dict(h2.parse_settings(first.payload))
    assert settings[h2.SETTINGS_INITIAL_WINDOW_SIZE] >= h2.DEFAULT_WINDOW
    client.send(h2.SETTINGS, h2.ACK, 0)
    client.send(h2.PING, 0, 0, b"12345678")
    frames = await client.frames_until_quiet(0.3)
    kinds = [(f.kind, f.flags) for f in frames]
    assert (h2.SETTINGS, h2.ACK) in kinds  # for our SETTINGS
    pongs = [f for f in frames if f.kind == h2.PING]
    assert [(p.flags, p.payload) for p in pongs] == [(h2.ACK, b"12345678")]
    # A PING ACK from us is not answered; a bad PING ends the connection.
    client.send(h2.PING, h2.ACK, 0, b"abcdefgh")
    assert not [f for f in await client.frames_until_quiet(0.2) if f.kind == h2.PING]
    client.send(h2.PING, 0, 0, b"short")
    assert await client.closed()
    assert goaway_codes(client.other) == [h2.FRAME_SIZE_ERROR]
    client.close()


async def test_send_flow_control_respects_stream_and_connection_windows(
    served: Served,
) -> None:
    size = 200_000
    client = await RawClient.connect(
        served.port, {h2.SETTINGS_INITIAL_WINDOW_SIZE: 1000}, connection_window=False)
    client.request(1, "Blob", str(size).encode())
    frames = await client.frames_until_quiet(0.3)
    data = [f for f in frames if f.kind == h2.DATA]
    assert sum(len(f.payload) for f in data) == 1000  # exactly the stream window
    received = sum(len(f.payload) for f in data)

    # Stream window opened wide: now the connection's 65,535 bytes are the limit.
    client.send(h2.WINDOW_UPDATE, 0, 1, h2.u32(1_000_000))
    frames = await client.frames_until_quiet(0.3)
    received += sum(len(f.payload) for f in frames if f.kind == h2.DATA)
    assert received == h2.DEFAULT_WINDOW
    assert all(len(f.payload) <= h2.DEFAULT_MAX_FRAME_BYTES
               for f in frames if f.kind == h2.DATA)

    client.send(h2.WINDOW_UPDATE, 0, 0, h2.u32(1_000_000))
    response = await client.response(1)
    total = h2.DEFAULT_WINDOW + len(response.data)
    assert total == size + 5
    assert response.trailers["grpc-status"] == "0"

    # WINDOW_UPDATE for the stream now closed is ignored; the connection lives on.
    client.send(h2.WINDOW_UPDATE, 0, 1, h2.u32(100))
    client.send(h2.PING, 0, 0, b"stillok!")
    frames = await client.frames_until_quiet(0.3)
    assert [f.payload for f in frames if f.kind == h2.PING] == [b"stillok!"]
    assert not goaway_codes(frames)
    client.close()


async def test_a_smaller_initial_window_mid_stream_makes_the_window_negative(
    served: Served,
) -> None:
    client = await RawClient.connect(served.port, {h2.SETTINGS_INITIAL_WINDOW_SIZE: 1000})
    client.request(1, "Blob", b"5000")
    received = sum(len(f.payload) for f in await client.frames_until_quiet(0.3)
                   if f.kind == h2.DATA)
    assert received == 1000
    # Window 0 - 500 = -500: the 600 credit leaves room for 100 bytes only.
    client.send(h2.SETTINGS, 0, 0, h2.settings_payload({h2.SETTINGS_INITIAL_WINDOW_SIZE: 500}))
    client.send(h2.WINDOW_UPDATE, 0, 1, h2.u32(600))
    frames = await client.frames_until_quiet(0.3)
    assert sum(len(f.payload) for f in frames if f.kind == h2.DATA) == 100
    assert (h2.SETTINGS, h2.ACK) in [(f.kind, f.flags) for f in frames]
    # Back up: the rest and the trailers.
    client.send(h2.SETTINGS, 0, 0,
                h2.settings_payload({h2.SETTINGS_INITIAL_WINDOW_SIZE: 100_000}))
    response = await client.response(1)
    assert 1100 + len(response.data) == 5005
    assert response.trailers["grpc-status"] == "0"
    client.close()


async def test_not_grpc_is_answered_415_and_rst_on_a_live_stream(served: Served) -> None:
    client = await RawClient.connect(served.port)
    client.send(h2.HEADERS, h2.END_HEADERS, 1, client.encoder.encode([
        (":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "t"),
    ]))
    response = await client.response(1)
    assert dict(response.trailers)[":status"] == "415"
    assert served.server.active_calls == 0
    client.request(3, "Echo", b"grpc")
    assert (await client.response(3)).data == grpc_message(b"grpc")
    client.close()


async def test_a_unary_body_split_over_many_frames_and_trailers(served: Served) -> None:
    client = await RawClient.connect(served.port)
    body = grpc_message(_pattern(100_000))
    client.request(1, "Reverse", None, end=False)
    for start in range(0, len(body), 7_000):
        client.send(h2.DATA, 0, 1, body[start : start + 7_000])
    client.send(h2.DATA, h2.END_STREAM, 1)
    response = await client.response(1)
    assert response.data == grpc_message(_pattern(100_000)[::-1])
    # A body of two messages is not a unary request.
    client.request(3, "Echo", None, end=False)
    client.send(h2.DATA, h2.END_STREAM, 3, grpc_message(b"a") + grpc_message(b"b"))
    response = await client.response(3)
    assert response.trailers["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    client.close()
    assert await wait_until(lambda: served.server.active_calls == 0)


async def test_padded_and_priority_headers_and_padded_data(served: Served) -> None:
    client = await RawClient.connect(served.port)
    block = client.encoder.encode([
        (":method", "POST"), (":scheme", "http"), (":path", f"/{SERVICE}/Reverse"),
        (":authority", "t"), ("content-type", "application/grpc"),
    ])
    payload = bytes([3]) + b"\x00\x00\x00\x00\x10" + block + b"\x00" * 3
    client.send(h2.HEADERS, h2.END_HEADERS | h2.PADDED | h2.PRIORITY, 1, payload)
    message = grpc_message(b"hello")
    client.send(h2.DATA, h2.END_STREAM | h2.PADDED, 1, bytes([10]) + message + b"\x00" * 10)
    response = await client.response(1)
    assert response.data == grpc_message(b"olleh")
    client.close()
