"""The reply side of a gRPC call on tfgate's HTTP/2 server, as header blocks.

Data path position: app/rpc/h2/outbound.py writes these after a servicer answers: the
response headers, the trailers with the call's status (or a trailers-only block when no
message was sent), split into HEADERS + CONTINUATION frames to fit the client's frame size.
Blocks are literals that never touch the client's hpack table, so the constant ones are
built once.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from app.rpc.h2 import frames as h2
from app.rpc.h2.call import ACCEPT_ENCODING
from app.rpc.h2.context import encode_grpc_message, metadata_fields

GRPC_CONTENT_TYPE = "application/grpc"
RESPONSE_FIELDS = [(":status", "200"), ("content-type", GRPC_CONTENT_TYPE),
                   ("grpc-accept-encoding", ACCEPT_ENCODING)]
RESPONSE_HEADERS = h2.literal_block(RESPONSE_FIELDS)
OK_TRAILERS = h2.literal_block([("grpc-status", "0")])
OK_TRAILERS_ONLY = h2.literal_block([*RESPONSE_FIELDS, ("grpc-status", "0")])
# grpc.aio's texts for the same situations.
METHOD_NOT_FOUND = "Method not found!"
LIMIT_EXCEEDED = "Concurrent RPC limit exceeded!"
DEADLINE_EXCEEDED = "Deadline Exceeded"


def status_block(
    headers_sent: bool, code: grpc.StatusCode, details: str,
    trailing: Sequence[tuple[str, str | bytes]],
) -> bytes:
    """The trailers; before any response headers, a trailers-only block (one HEADERS frame
    with the response headers and the status)."""
    if code == grpc.StatusCode.OK and not trailing:
        return OK_TRAILERS if headers_sent else OK_TRAILERS_ONLY
    fields = [("grpc-status", str(code.value[0]))]
    if details:
        fields.append(("grpc-message", encode_grpc_message(details)))
    fields += metadata_fields(trailing)
    return h2.literal_block(fields if headers_sent else RESPONSE_FIELDS + fields)


def header_frames(stream_id: int, block: bytes, max_frame_bytes: int) -> list[bytes]:
    """An END_STREAM header block, split into CONTINUATIONs beyond the frame size."""
    size = max_frame_bytes
    if len(block) <= size:
        return [h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, stream_id, block)]
    frames = [h2.frame(h2.HEADERS, h2.END_STREAM, stream_id, block[:size])]
    for start in range(size, len(block), size):
        last = start + size >= len(block)
        frames.append(h2.frame(h2.CONTINUATION, h2.END_HEADERS if last else 0, stream_id,
                               block[start : start + size]))
    return frames
