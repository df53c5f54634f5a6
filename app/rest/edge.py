"""The REST port's connection edge: uvicorn's httptools protocol with tfgate's limits.

Data path position: TCP bytes -> EdgeHttpProtocol (this module: connection cap, header and
body timeouts, body size, one send per response) -> uvicorn's request cycle -> the ASGI app
(rest/api.py, ops/admin FastAPI apps). Everything a client can hold open or make the gateway
buffer is bounded here, before any route runs (DESIGN rule 8), and every refusal is TF
Serving's error body shape `{"error": ...}`:

- connections: at `max_connections` a new connection replaces the one that has been waiting
  longest with no request running (an idle keep-alive or a client still trickling headers);
  when every connection has a request running, the newcomer gets 503 and is closed.
- header timeout: from connect, or from the first byte of a later request, until the
  request's headers are complete; idle keep-alive between requests is uvicorn's
  timeout_keep_alive.
- body: a declared Content-Length over the limit gets 413 before any of the body is read;
  a chunked body is counted as it arrives; the whole body must arrive within the body
  timeout (408). The bytes of a body its connection drops before it is complete count
  towards the next heap trim (core/heap_trim.py), so abandoned uploads leave no RSS behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from app.codec.predict_response import encode_error
from app.core.heap_trim import HeapTrim
from app.core.throttled_log import ThrottledWarning

log = logging.getLogger("tfgate.http")

_REFUSAL_KEY = "tfgate.refusal"  # scope key: (status, message) the request is answered with
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    max_connections: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_body_bytes: int


def body_too_large_text(max_body_bytes: int) -> str:
    return f"Request body is larger than the limit of {max_body_bytes} bytes"


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response with TF Serving's error body that closes the connection."""
    body = encode_error(message)
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


def error_app(status: int, message: str) -> Any:
    """An ASGI app answering every request with `status` and closing the connection."""
    body = encode_error(message)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


_refusals = ThrottledWarning(log)  # REST connections refused at the cap


class _CoalescingTransport:
    """Holds a response's status line and headers until its body is written in the same
    event-loop turn, so a response costs one send() instead of two (uvicorn writes them
    separately; the second syscall was ~20% of the gateway's CPU under load). Anything left
    pending is flushed at the end of the turn, and before close()."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._pending is not None:
            data = self._pending + data
            self._pending = None
        elif data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n"):
            self._pending = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._pending is not None:
            data, self._pending = self._pending, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def send_whole(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
    """Write a whole response (status line, `headers`, content-length, `body`) in one
    transport write, and do what uvicorn's send() does for a response sent as one body
    message: the cycle's state, keep-alive or close, then the connection's next request.
    uvicorn's send() costs two awaited calls and a regex pair per header, about 8% of the
    gateway's CPU on 1-row requests; this is the hot path of rest/api.py's answers.

    `headers` must be lowercase names and CR/LF-free values built by tfgate (a client's
    X-Request-ID is only echoed after rest/api.py's REQUEST_ID_RE), with no content-length,
    transfer-encoding or connection among them. False when this does not apply: `send` is not
    uvicorn's httptools cycle (tests, another server), the response has started, the client
    is gone or not reading (uvicorn's send() waits for it), a HEAD request, or a connection
    header; the caller then sends through ASGI."""
    cycle = getattr(send, "__self__", None)
    if (
        type(cycle) is not RequestResponseCycle
        or cycle.response_started
        or cycle.disconnected
        or cycle.flow.write_paused
        or cycle.scope["method"] == "HEAD"
        or cycle.access_log  # uvicorn's access log line is written by its send()
    ):
        return False
    parts = [STATUS_LINE[status]]
    for name, value in (*cycle.default_headers, *headers):
        if name == b"connection":
            return False
        parts += (name, b": ", value, b"\r\n")
    keep_alive = cycle.keep_alive
    parts.append(b"content-length: %d\r\n" % len(body))
    parts.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
    parts.append(body)
    cycle.response_started = True
    cycle.response_complete = True
    cycle.waiting_for_100_continue = False
    cycle.transport.write(b"".join(parts))
    cycle.message_event.set()
    if not keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a _CoalescingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


class EdgeHttpProtocol(CoalescingHttpToolsProtocol):
    """CoalescingHttpToolsProtocol with the limits of `edge_protocol(limits)`."""

    limits: HttpLimits  # set on the subclass edge_protocol() makes
    heap_trim: HeapTrim  # ...and one for all its connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # when this connection last had no request running
        self._body_bytes = 0
        self._in_message = False

    # --- connection ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            _refusals.note(
                "REST connections refused (503): %d since the last report; %d open, every "
                "one with a request running (--rest_max_connections)", len(self.connections),
            )
            self._refuse(503, "Too many connections")
            return
        self._arm(self.limits.header_timeout_seconds, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._in_message and self._body_bytes:  # a body that will never be complete
            self.heap_trim.dropped(min(self._body_bytes, self.limits.max_body_bytes), self.loop)
        super().connection_lost(exc)

    def _make_room(self) -> bool:
        """At the cap: close the connection waiting longest with no request running (one
        already closing counts as room); False if every other connection is busy."""
        oldest: EdgeHttpProtocol | None = None
        live = 0
        for other in self.connections:
            if other.transport.is_closing():
                continue
            live += 1
            if other is self or not isinstance(other, EdgeHttpProtocol) or other._busy():
                continue
            if oldest is None or other._waiting_since < oldest._waiting_since:
                oldest = other
        if live <= self.limits.max_connections:
            return True
        if oldest is None:
            return False
        oldest._disarm()
        oldest.transport.close()
        return True

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, status: int, message: str) -> None:
        """Answer with TF Serving's error body and close, whatever the request was doing."""
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            # The running app sees a disconnect; its later sends are dropped by uvicorn.
            cycle.disconnected = True
            cycle.message_event.set()
            if started:
                self.transport.close()
                return
        if not self.transport.is_closing():
            self.transport.write(error_response(status, message))
            self.transport.close()

    # --- timers ---

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_header_timeout(self) -> None:
        self._timer = None
        if self._in_message:
            self._refuse(408, "Timed out waiting for the request headers")
        elif not self.transport.is_closing():
            self.transport.close()  # not a byte of a request: nothing to answer

    def _on_body_timeout(self) -> None:
        self._timer = None
        self._refuse(408, "Timed out waiting for the request body")

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        self._body_bytes = 0
        if self._timer is None:
            self._arm(self.limits.header_timeout_seconds, self._on_header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        declared = _content_length(self.headers)
        if declared is not None and declared > self.limits.max_body_bytes:
            # Refused before a byte of the body is read: the request's app is swapped for a
            # 413 (_start_asgi_task, called from the super() call below or, pipelined, later).
            self.scope[_REFUSAL_KEY] = (413, body_too_large_text(self.limits.max_body_bytes))  # type: ignore[literal-required]
        elif declared != 0 and (declared is not None or _chunked(self.headers)):
            self._arm(self.limits.body_timeout_seconds, self._on_body_timeout)
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        refusal = cycle.scope.get(_REFUSAL_KEY)
        if refusal is not None:
            app = error_app(*refusal)
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            if self._body_bytes - len(body) <= self.limits.max_body_bytes:
                self._refuse(413, body_too_large_text(self.limits.max_body_bytes))
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse (bad bytes in the path, broken framing)."""
        self._disarm()
        self.transport.write(error_response(400, msg))
        self.transport.close()


def edge_protocol(limits: HttpLimits) -> type[EdgeHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to `limits`."""
    return type("EdgeHttpProtocol", (EdgeHttpProtocol,), {"limits": limits,
                                                          "heap_trim": HeapTrim("REST")})


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared Content-Length (httptools already refused malformed ones)."""
    for name, value in headers:
        if name == b"content-length":
            text = value.strip()
            # Digits only and short enough for int(): anything longer is over any limit.
            return int(text) if text.isdigit() and len(text) <= 18 else 1 << 62
    return None


def _chunked(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name == b"transfer-encoding" and b"chunked" in value.lower() for name, value in headers
    )
