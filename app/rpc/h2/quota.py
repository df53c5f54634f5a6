"""One server-wide count of the request bytes tfgate's HTTP/2 gRPC server holds.

Data path position: beside app/rpc/h2/limits.py. GrpcH2Server (app/rpc/h2/server.py) owns one
RequestQuota for all its listeners and connections; InboundFrames (app/rpc/h2/inbound.py)
takes from it before a DATA frame's request bytes are buffered (a partly received unary
message, or a streaming call's bytes and queued messages), and gives back when those bytes
leave the transport: a unary message complete and handed to its handler, a streaming message
taken by its handler, or the call's end (answered, cancelled, reset, refused, connection
lost; OutboundFrames._release in app/rpc/h2/outbound.py).

Why: the per-connection bounds (the unary buffer budget, the connection window) let what many
connections pin together grow with --grpc_max_connections; this caps the sum, as grpc core's
resource quota does for grpc.aio. A DATA frame that would pass the quota fails its own call
(RESOURCE_EXHAUSTED), not the connection: the client's other calls and other clients go on.
"""

from __future__ import annotations

import logging

from app.core.throttled_log import ThrottledWarning

log = logging.getLogger("tfgate.grpc")



class RequestQuota:
    """Request bytes held by the transport (held_bytes), at most limit_bytes; how many calls
    it refused. Event-loop only (no locks)."""

    __slots__ = ("held_bytes", "limit_bytes", "refusals_log", "refused_calls")

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError(f"request buffer quota must be positive, not {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.refused_calls = 0
        self.refusals_log = ThrottledWarning(log)

    def take(self, size: int) -> bool:
        """Count `size` more bytes as held, unless that would pass the quota (then False and
        nothing is counted)."""
        if self.held_bytes + size > self.limit_bytes:
            return False
        self.held_bytes += size
        return True

    def give_back(self, size: int) -> None:
        self.held_bytes -= size

    def refuse(self, peer: str) -> str:
        """A call is refused: counted (and logged now and then); returns its status text."""
        self.refused_calls += 1
        self.refusals_log.note(
            "gRPC request buffer full: %d call(s) refused with RESOURCE_EXHAUSTED since the "
            "last report, the latest from %s (%d bytes held, quota %d, "
            "--grpc_max_buffered_request_bytes)",
            peer, self.held_bytes, self.limit_bytes,
        )
        return refusal_text(self.held_bytes, self.limit_bytes)


def refusal_text(held_bytes: int, limit_bytes: int) -> str:
    """What a refused call's client reads in grpc-message."""
    return (f"The server's request buffer is full ({held_bytes} bytes held, "
            f"quota {limit_bytes}): try again later")
