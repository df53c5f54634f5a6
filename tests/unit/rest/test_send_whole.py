"""app/rest/edge.py send_whole(): a whole response in one write, with uvicorn's own protocol.

The REST port's protocol (edge_protocol: uvicorn's httptools protocol with tfgate's limits) is
driven in process over a recording transport: requests go in as bytes, responses come out as
the bytes written. send_whole() must write exactly what uvicorn's send() writes for the same
response, keep a keep-alive connection serving (pipelined requests too), close a connection
the client asked to close, and step aside (False, nothing written, no state changed) whenever
uvicorn's send() has something to do that it does not: a HEAD request, a client that is not
reading, a connection header, or a `send` that is not uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from app.rest.edge import HttpLimits, edge_protocol, send_whole

LIMITS = HttpLimits(
    max_connections=16, header_timeout_seconds=5.0, body_timeout_seconds=5.0,
    max_body_bytes=1 << 20,
)
HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"abc-1")]
BODY = b'{"predictions": [2.5]}'


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8501)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class App:
    """Answers every request with HEADERS + BODY, through send_whole() unless `asgi_only`;
    records what send_whole() returned."""

    def __init__(self, asgi_only: bool = False, headers: list | None = None) -> None:
        self.asgi_only = asgi_only
        self.headers = HEADERS if headers is None else headers
        self.fast: list[bool] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = list(self.headers)
        if not self.asgi_only:
            self.fast.append(send_whole(send, 200, headers, BODY))
            if self.fast[-1]:
                return
        headers.append((b"content-length", str(len(BODY)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})


def serve(app: App, requests: bytes, before: Any = None) -> tuple[RecordingTransport, Any]:
    """Feed `requests` to a fresh connection of the REST port's protocol; returns its
    transport once every task the requests started has finished."""
    async def run() -> tuple[RecordingTransport, Any]:
        config = Config(app=app, lifespan="off", server_header=False, date_header=False,
                        access_log=False, proxy_headers=False)
        config.load()
        protocol = edge_protocol(LIMITS)(config=config, server_state=ServerState(),
                                         app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        if before is not None:
            before(protocol)
        protocol.data_received(requests)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if protocol.cycle is not None and protocol.cycle.response_complete \
                    and not protocol.pipeline:
                break
        await asyncio.sleep(0.01)  # the coalescing transport's end-of-turn flush
        protocol._disarm()
        return transport, protocol
    return asyncio.run(run())


POST = b"POST /v1/models/m:predict HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}"


def test_the_bytes_are_exactly_what_uvicorns_send_writes() -> None:
    fast, _ = serve(App(), POST)
    asgi, _ = serve(App(asgi_only=True), POST)
    assert b"".join(fast.writes) == b"".join(asgi.writes)
    assert b"".join(fast.writes) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: abc-1\r\n"
        b"content-length: 22\r\n\r\n" + BODY)
    assert len(fast.writes) == 1 and not fast.closed


def test_pipelined_requests_on_a_keep_alive_connection_are_each_answered_in_order() -> None:
    app = App()
    transport, protocol = serve(app, POST * 3)
    assert app.fast == [True, True, True]
    assert transport.writes == [transport.writes[0]] * 3
    assert not transport.closed and protocol.cycle.response_complete


def test_a_client_that_asks_to_close_gets_connection_close_and_a_closed_socket() -> None:
    request = b"POST /v1/models/m:predict HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}"
    app = App()
    fast, _ = serve(app, request)
    asgi, _ = serve(App(asgi_only=True), request)
    assert app.fast == [True]
    assert b"".join(fast.writes) == b"".join(asgi.writes)
    assert b"\r\nconnection: close\r\n" in fast.writes[0]
    assert fast.closed and asgi.closed


def test_it_steps_aside_for_head_a_paused_client_and_a_connection_header() -> None:
    head = b"HEAD /v1/models/m HTTP/1.1\r\nhost: a\r\n\r\n"
    app = App()
    transport, _ = serve(app, head)
    assert app.fast == [False]
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                b"x-request-id: abc-1\r\ncontent-length: 22\r\n\r\n"]

    def paused(protocol: Any) -> None:  # the client stopped reading: uvicorn's send waits
        protocol.pause_writing()
        asyncio.get_running_loop().call_later(0.05, protocol.resume_writing)
    app = App()
    transport, _ = serve(app, POST, before=paused)
    assert app.fast == [False] and b"".join(transport.writes).endswith(BODY)

    app = App(headers=[*HEADERS, (b"connection", b"close")])
    transport, _ = serve(app, POST)
    assert app.fast == [False] and transport.closed


def test_a_send_that_is_not_uvicorns_is_left_alone() -> None:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    assert send_whole(send, 200, HEADERS, BODY) is False
    assert sent == []


def test_v2_answers_take_the_same_single_write(monkeypatch: Any) -> None:
    """The Open Inference Protocol's REST answers (rest/v2_routes.py) go out through
    send_whole() too, with the bytes uvicorn's send() would have written."""
    from app.rest import v2_routes

    returned: list[bool] = []

    def recording(*args: Any) -> bool:
        returned.append(send_whole(*args))
        return returned[-1]

    def api() -> v2_routes.V2RestApi:
        return v2_routes.V2RestApi(
            None,  # type: ignore[arg-type]  # the health paths never reach the service
            server_ready=lambda: True, timeout_ms=0, max_body_bytes=1 << 20,
        )

    request = b"GET /v2/health/ready HTTP/1.1\r\nhost: a\r\n\r\n"
    monkeypatch.setattr(v2_routes, "send_whole", recording)
    fast, _ = serve(api(), request)  # type: ignore[arg-type]
    assert returned == [True]
    monkeypatch.setattr(v2_routes, "send_whole", lambda *args: False)
    asgi, _ = serve(api(), request)  # type: ignore[arg-type]
    assert b"".join(fast.writes) == b"".join(asgi.writes) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n"
        b'{"ready":true}')
