"""bench/grpc_h2.py, the load generator's raw HTTP/2 gRPC client, against a grpc.aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import hpack
import pytest

from bench.grpc_h2 import H2Connection, HeaderDecoder
from bench.loadgen import GrpcTarget, LevelOptions, run_level

PREDICT = "/tensorflow.serving.PredictionService/Predict"


class _Server:
    """A grpc.aio server whose Predict answers with the request's length, or fails on
    requests that start with b"fail"."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", -1)]
        )
        handler = grpc.unary_unary_rpc_method_handler(self._predict)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(
                "tensorflow.serving.PredictionService", {"Predict": handler}
            ),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _predict(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.received.append(request)
        if request.startswith(b"fail"):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        return str(len(request)).encode()


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    s = _Server()
    await s.server.start()
    yield s
    await s.server.stop(None)


async def _connect(port: int, request: bytes) -> H2Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: H2Connection("127.0.0.1", port, request), "127.0.0.1", port
    )
    return conn


async def _calls(conn: H2Connection, count: int) -> list[str | None]:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(count)]
    for future in futures:
        conn.call(0, lambda _sent, error, f=future: f.set_result(error))
    return await asyncio.wait_for(asyncio.gather(*futures), timeout=20)


async def test_calls_larger_than_the_flow_control_windows_arrive_whole(server: _Server) -> None:
    request = bytes(range(256)) * 1200  # 300 kB: beyond the 64 kB default windows
    conn = await _connect(server.port, request)
    assert await _calls(conn, 40) == [None] * 40  # 12 MB in all, many window updates
    assert len(server.received) == 40
    assert all(r == request for r in server.received)
    assert not conn.busy
    conn.close()


async def test_a_failed_call_reports_its_grpc_status_name(server: _Server) -> None:
    conn = await _connect(server.port, b"fail please")
    assert await _calls(conn, 3) == ["grpc_RESOURCE_EXHAUSTED"] * 3
    conn.close()


async def test_server_going_away_fails_calls_instead_of_hanging(server: _Server) -> None:
    conn = await _connect(server.port, b"x" * 100)
    assert await _calls(conn, 2) == [None, None]
    await server.server.stop(None)
    await asyncio.wait_for(conn.closed, timeout=10)
    errors = await _calls(conn, 2)  # a dead connection answers at once
    assert all(e in ("disconnected",) or e.startswith("goaway") for e in errors), errors


async def test_run_level_closed_and_open_loop(server: _Server) -> None:
    target = GrpcTarget("127.0.0.1", server.port, b"y" * 70_000)
    options = LevelOptions(concurrency=6, warmup_seconds=0.2, window_seconds=0.3,
                           min_windows=2, max_windows=2, drain_seconds=5)
    windows, _, _ = await run_level(target, options)
    assert sum(len(w.latencies_ns) for w in windows) > 10
    assert not any(w.errors for w in windows)
    open_loop = LevelOptions(request_rate=200, warmup_seconds=0.2, window_seconds=0.3,
                             min_windows=2, max_windows=2, drain_seconds=5)
    windows, _, _ = await run_level(target, open_loop)
    completed = sum(len(w.latencies_ns) for w in windows)
    assert 60 <= completed <= 180  # ~0.6 s at 200/s
    assert not any(w.errors for w in windows)


def test_header_decoder_drops_reused_blocks_when_the_table_changes() -> None:
    encoder = hpack.Encoder()  # indexes what it sends, as gRPC servers do
    decoder = HeaderDecoder()
    first = encoder.encode([("grpc-status", "0")])  # literal, inserted into the table
    assert decoder.decode(first) == [("grpc-status", "0")]
    indexed = encoder.encode([("grpc-status", "0")])  # now one byte: dynamic index 62
    assert indexed != first
    assert decoder.decode(indexed) == [("grpc-status", "0")]
    assert indexed in decoder.known  # no table change: kept for the next reply
    # A new entry shifts the dynamic indexes: the same byte now names another header.
    decoder.decode(encoder.encode([("grpc-message", "queue full")]))
    assert not decoder.known
    assert decoder.decode(indexed) == [("grpc-message", "queue full")]
