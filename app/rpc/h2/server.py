"""tfgate's own gRPC server: gRPC over HTTP/2 on asyncio, in the gateway's event loop.

Data path position: the gRPC front. A call arrives as HTTP/2 frames on a connection
(GrpcH2Connection), its request message is handed to the servicer registered for its path
(app/rpc/services.py and the others, unchanged), and the servicer's response goes back as
HEADERS, DATA and trailers. app/rpc/server.py builds this server by default
(--grpc_implementation=h2) and grpc.aio's with --grpc_implementation=grpcio.

Why it exists: grpc.aio spends ~330 us of CPU per call on this machine before tfgate's own
code runs (its C core, a poller thread handing completions to the loop, Cython wrappers);
on 2 cores shared with the model that is what bounds large gRPC requests. Here a call is a
few frames parsed and written by one protocol object on the loop tfgate already runs.

What it implements of HTTP/2 (RFC 9113) and gRPC's HTTP/2 mapping: the preface and
SETTINGS (window, frame size, header table), hpack via the hpack package, flow control in
both directions, CONTINUATION, PING, RST_STREAM (cancels the handler), GOAWAY on shutdown
with a grace period, grpc-timeout deadlines (DEADLINE_EXCEEDED, handler cancelled),
gzip/deflate request messages, binary metadata, trailers-only errors, unary and streaming
handlers (reflection streams both ways, health Watch streams replies), and a cap on
concurrent calls (--grpc_max_threads). Against hostile clients (app/rpc/h2/limits.py):
a connection cap, handshake and idle timeouts, MAX_CONCURRENT_STREAMS, the receive message
limit checked on each length prefix, capped decompression off the loop, credit returned
only for consumed bytes, one server-wide quota on buffered request bytes
(--grpc_max_buffered_request_bytes, app/rpc/h2/quota.py), reading paused while the client
does not read, budgets for resets (Rapid Reset) and control frames (ENHANCE_YOUR_CALM),
grpc core's ping-abuse policy and server keepalive PINGs (app/rpc/h2/keepalive.py), RFC
9113's connection and stream errors. Not here: grpc core's channel arguments (with
--grpc_channel_arguments tfgate serves with grpc.aio instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
from collections.abc import Sequence
from typing import Any, NamedTuple

from app.core.heap_trim import HeapTrim
from app.rpc.h2 import frames as h2
from app.rpc.h2.connection import GrpcH2Connection
from app.rpc.h2.frame_quota import FrameQuota, frame_quota_bytes
from app.rpc.h2.inbound import MAX_FRAME_BYTES
from app.rpc.h2.limits import H2Limits
from app.rpc.h2.quota import RequestQuota


class _CallDetails(NamedTuple):
    """grpc.HandlerCallDetails for generic handlers' service()."""

    method: str
    invocation_metadata: tuple[Any, ...]


class MethodRegistry:
    """Method path -> grpc.RpcMethodHandler, filled by the generated add_*_to_server()
    functions exactly as they fill a grpc.aio server."""

    def __init__(self) -> None:
        self._generic: list[Any] = []
        self._handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = _with_serializers(handler)

    def lookup(self, path: str) -> Any:
        """The handler for `path`, or None. Found handlers are kept; unknown paths are not
        (a client could otherwise grow the table without bound)."""
        handler = self._handlers.get(path)
        if handler is None:
            details = _CallDetails(path, ())
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    handler = _with_serializers(handler)
                    self._handlers[path] = handler
                    break
        return handler


def _with_serializers(handler: Any) -> Any:
    """grpc passes raw bytes through when a handler has no (de)serializer."""
    if handler.request_deserializer is None:
        handler = handler._replace(request_deserializer=bytes)
    if handler.response_serializer is None:
        handler = handler._replace(response_serializer=bytes)
    return handler


class GrpcH2Server:
    """The listeners, the method registry, and the open connections (for shutdown)."""

    def __init__(
        self, max_concurrent_calls: int | None = None, limits: H2Limits | None = None
    ) -> None:
        self.registry = MethodRegistry()
        self.limits = limits or H2Limits()
        # One count of buffered request bytes for every listener and connection.
        self.request_quota = RequestQuota(self.limits.max_buffered_request_bytes)
        # What calls abandon goes back to the kernel, not only to malloc's free lists.
        self.heap_trim = HeapTrim("gRPC (h2)")
        # ...and of incomplete frames in the connections' read buffers (up to one each).
        self.frame_quota = FrameQuota(frame_quota_bytes(
            self.limits.max_buffered_request_bytes, MAX_FRAME_BYTES + h2.FRAME_HEADER_BYTES))
        self.max_concurrent_calls = max_concurrent_calls or 0
        self.active_calls = 0
        self.connections: set[GrpcH2Connection] = set()
        self.listeners: list[asyncio.Server] = []
        self.socket_paths: list[str] = []
        self.closing = False
        self._idle: asyncio.Event | None = None

    # The generated add_*Servicer_to_server() functions call these.
    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self.registry.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registry.add_registered_method_handlers(service, handlers)

    async def listen(self, address: str, ssl_context: ssl.SSLContext | None) -> None:
        """Listen on "host:port", "[v6]:port" or "unix:path"; OSError when it cannot."""
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {"ssl": ssl_context}
        if ssl_context is not None and self.limits.handshake_timeout_seconds > 0:
            tls["ssl_handshake_timeout"] = self.limits.handshake_timeout_seconds
        if address.startswith("unix:"):
            path = address[len("unix:"):]
            listener = await loop.create_unix_server(
                lambda: GrpcH2Connection(self), path, **tls)
            self.socket_paths.append(path)
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            if host == "::":  # as grpc listens on [::]: IPv4 clients too
                listener = await loop.create_server(
                    lambda: GrpcH2Connection(self), sock=_dual_stack_socket(int(port)), **tls)
            else:
                listener = await loop.create_server(
                    lambda: GrpcH2Connection(self), host, int(port), reuse_address=True, **tls)
        self.listeners.append(listener)

    def call_released(self) -> None:
        if self._idle is not None and not self.active_calls:
            self._idle.set()

    async def stop(self, grace_seconds: float | None) -> None:
        """Stop listening, let open calls finish for up to grace_seconds, then end them."""
        self.closing = True
        for listener in self.listeners:
            listener.close()
        self._idle = asyncio.Event()
        for connection in list(self.connections):
            connection.go_away()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (grace_seconds or 0.0)
        with contextlib.suppress(asyncio.TimeoutError):
            while self.active_calls and loop.time() < give_up:
                self._idle.clear()
                await asyncio.wait_for(self._idle.wait(), give_up - loop.time())
        for connection in list(self.connections):
            connection.abort_calls()
        for path in self.socket_paths:  # grpc removes its UNIX socket files too
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
        self.heap_trim.cancel()
        await asyncio.sleep(0)  # let the transports close


def _dual_stack_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
