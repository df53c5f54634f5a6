"""What a gRPC servicer sees of its call when app/rpc/h2/server.py serves it.

Data path position: between the HTTP/2 stream (app/rpc/h2/server.py) and the servicers
(app/rpc/services.py, rpc/admin.py, gRPC's health and reflection servicers). The
servicers are written against grpc.aio's ServicerContext; CallContext answers the part of
that interface they use (metadata, deadline, abort, status, streaming writes), so the same
servicer objects run on either gRPC server. Also here: the gRPC-over-HTTP/2 encodings of a
call's header fields (grpc-timeout, binary metadata, grpc-message).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

# Header fields that are HTTP/2 or gRPC transport, not call metadata (what grpc.aio leaves
# out of invocation_metadata()).
TRANSPORT_HEADERS = frozenset(
    {"te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"}
)
_TIMEOUT_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

Metadata = tuple[tuple[str, str | bytes], ...]


def parse_grpc_timeout(text: str) -> float | None:
    """grpc-timeout ("1-8 digits" + unit) in seconds; None for a value gRPC would not send."""
    unit = _TIMEOUT_UNIT_SECONDS.get(text[-1:])
    digits = text[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


def call_metadata(headers: Sequence[tuple[str, str]]) -> Metadata:
    """A request's metadata as grpc.aio gives it: header order, binary ("-bin") values
    base64-decoded to bytes, transport fields left out."""
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name.startswith(":") or name in TRANSPORT_HEADERS:
            continue
        if name.endswith("-bin"):
            try:
                metadata.append((name, base64.b64decode(value + "=" * (-len(value) % 4))))
            except ValueError:
                continue  # not base64: grpc drops the element
        else:
            metadata.append((name, value))
    return tuple(metadata)


def metadata_fields(metadata: Sequence[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """Metadata a servicer sends (initial or trailing) as header fields."""
    fields = []
    for name, value in metadata:
        name = name.lower()
        if isinstance(value, bytes):
            fields.append((name, base64.b64encode(value).decode().rstrip("=")))
        else:
            fields.append((name, value))
    return fields


def encode_grpc_message(message: str) -> str:
    """grpc-message is percent-encoded UTF-8: bytes outside printable ASCII, and '%'."""
    raw = message.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return message
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in raw
    )


def peer_name(transport: asyncio.BaseTransport) -> str:
    """As grpc names peers: ipv4:host:port, ipv6:[host]:port, unix:path."""
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host, port = name[0], name[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return f"unix:{name or ''}"  # a client's UNIX socket is usually unnamed: "unix:"


class CallContext:
    """grpc.aio.ServicerContext's methods that tfgate's servicers and gRPC's health and
    reflection servicers call, for one call served by app/rpc/h2/server.py."""

    __slots__ = (
        "_code", "_deadline", "_details", "_done", "_metadata", "_peer", "_trailing", "_writer",
    )

    def __init__(
        self,
        metadata: Metadata,
        deadline: float | None,
        peer: str,
        writer: Callable[[Any], Awaitable[None]],
    ) -> None:
        self._metadata = metadata
        self._deadline = deadline  # time.monotonic() clock
        self._peer = peer
        self._writer = writer
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._trailing: Metadata = ()
        self._done = False

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> None:
        """End the call with `code`: raises grpc.aio.AbortError, as grpc.aio does."""
        if code == grpc.StatusCode.OK:
            code = grpc.StatusCode.UNKNOWN  # grpc.aio refuses to abort with OK the same way
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    async def write(self, message: Any) -> None:
        """One response message of a server-streaming call."""
        await self._writer(message)

    def done(self) -> bool:
        """True once the call has ended (answered, cancelled or past its deadline)."""
        return self._done

    def cancelled(self) -> bool:
        return self._done and self._code == grpc.StatusCode.CANCELLED

    def mark_done(self, code: grpc.StatusCode | None = None) -> None:
        """The server's side: the call ended (with `code` when the server ended it)."""
        self._done = True
        if code is not None:
            self._code = code
