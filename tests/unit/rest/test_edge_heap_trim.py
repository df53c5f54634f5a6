"""app/rest/edge.py: the bytes of a request body its connection drops before the body is
complete are reported to the REST port's heap trim (app/core/heap_trim.py); a complete body,
and a connection with no request, report nothing.

Driven in process like tests/unit/rest/test_send_whole.py: the edge protocol over a recording
transport, its connection ended by hand."""

from __future__ import annotations

import asyncio

from uvicorn.config import Config
from uvicorn.server import ServerState

from app.rest.edge import HttpLimits, edge_protocol
from tests.unit.rest.test_send_whole import App, RecordingTransport

LIMITS = HttpLimits(
    max_connections=16, header_timeout_seconds=5.0, body_timeout_seconds=5.0,
    max_body_bytes=1 << 20,
)


def dropped_after(data: bytes) -> int:
    """Feed `data` to a fresh connection, let its app run, lose the connection: the bytes
    the port's heap trim was told were dropped."""
    async def run() -> int:
        config = Config(app=App(), lifespan="off", access_log=False, proxy_headers=False)
        config.load()
        protocol_class = edge_protocol(LIMITS)
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(RecordingTransport())
        protocol.data_received(data)
        await asyncio.sleep(0.05)
        protocol.connection_lost(None)
        await asyncio.sleep(0.01)
        protocol._disarm()
        return protocol_class.heap_trim.dropped_bytes
    return asyncio.run(run())


def post(declared: int, body: bytes) -> bytes:
    return (b"POST /v1/models/m:predict HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n"
            % declared + body)


def test_a_body_cut_short_is_reported_dropped() -> None:
    assert dropped_after(post(500_000, b"1" * 300_000)) == 300_000


def test_a_chunked_body_cut_short_is_reported_dropped() -> None:
    data = (b"POST /v1/models/m:predict HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
            b"40000\r\n" + b"1" * 0x40000 + b"\r\n10\r\n12345")
    assert dropped_after(data) == 0x40000 + 5


def test_a_body_past_the_limit_counts_up_to_the_limit() -> None:
    """Refused with 413 at the limit; what came past it was never buffered."""
    data = (b"POST /v1/models/m:predict HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
            b"180000\r\n" + b"1" * 0x180000 + b"\r\n")
    assert dropped_after(data) == LIMITS.max_body_bytes


def test_complete_requests_and_idle_connections_report_nothing() -> None:
    assert dropped_after(post(2, b"{}")) == 0
    assert dropped_after(b"") == 0
    assert dropped_after(b"POST /v1/models/m:predict HTTP/1.1\r\nhost: a\r\n") == 0
