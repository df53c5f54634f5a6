"""bench/grpc_h2.py, the load generator's raw HTTP/2 gRPC client, against a grpc.aio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import hpack
import pytest

from bench.grpc_h2 import H2Connection, HeaderDecoder, grpc_timeout
from bench.loadgen import GrpcTarget, LevelOptions, run_level

PREDICT = "/tensorflow.serving.PredictionService/Predict"


class _Server:
    """A grpc.aio server whose Predict answers with the request's length, or fails on
    requests that start with b"fail"."""

    def __init__(self, options: tuple[tuple[str, int], ...] = ()) -> None:
        self.received: list[bytes] = []
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", -1), *options]
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
        if request.startswith(b"fail long"):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "x" * 100_000)
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
    # A 100 kB grpc-message is over hpack's default header list limit: still read.
    conn = await _connect(server.port, b"fail long")
    assert await _calls(conn, 3) == ["grpc_RESOURCE_EXHAUSTED"] * 3
    assert conn.usable
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


async def _closed_level(port: int, concurrency: int) -> list:
    target = GrpcTarget("127.0.0.1", port, b"z" * 2_000)
    options = LevelOptions(concurrency=concurrency, warmup_seconds=0.2, window_seconds=0.4,
                           min_windows=4, max_windows=4, drain_seconds=5)
    windows, _, _ = await run_level(target, options)
    return windows


async def test_connections_that_reach_their_max_age_are_replaced() -> None:
    """GOAWAY at grpc.max_connection_age_ms: the calls the server still answers finish, the
    slot reconnects, and every window keeps completing calls."""
    server = _Server((("grpc.max_connection_age_ms", 300), ("grpc.max_connection_age_grace_ms", 5000)))
    await server.server.start()
    try:
        windows = await _closed_level(server.port, 8)
    finally:
        await server.server.stop(None)
    assert all(len(w.latencies_ns) > 20 for w in windows), [len(w.latencies_ns) for w in windows]
    assert sum(sum(w.errors.values()) for w in windows) <= sum(len(w.latencies_ns) for w in windows) // 20


async def test_calls_beyond_the_concurrent_stream_limit_wait() -> None:
    server = _Server((("grpc.max_concurrent_streams", 2),))
    await server.server.start()
    try:
        windows = await _closed_level(server.port, 12)
    finally:
        await server.server.stop(None)
    assert not any(w.errors for w in windows), [w.errors for w in windows]
    assert all(w.latencies_ns for w in windows)


async def test_a_server_that_is_gone_shows_as_errors_not_as_silence(server: _Server) -> None:
    target = GrpcTarget("127.0.0.1", server.port, b"z" * 100)
    options = LevelOptions(concurrency=4, warmup_seconds=0.2, window_seconds=0.3,
                           min_windows=3, max_windows=3, drain_seconds=2)
    level = asyncio.create_task(run_level(target, options))
    await asyncio.sleep(0.1)
    await server.server.stop(None)
    windows, _, _ = await asyncio.wait_for(level, 20)
    assert all(w.errors.get("connect_failed") for w in windows[1:]), [w.errors for w in windows]


def test_grpc_timeout_header_stays_within_eight_digits() -> None:
    assert grpc_timeout(60) == "60000m"
    assert grpc_timeout(0.0001) == "1m"
    assert grpc_timeout(200_000) == "200000S"
    assert grpc_timeout(1e9) == "16666667M"
    assert all(len(grpc_timeout(t)) <= 9 for t in (1e5, 1e8, 1e11))
