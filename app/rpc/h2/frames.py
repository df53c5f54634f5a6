"""HTTP/2 framing for tfgate's gRPC server.

Data path position: the bottom of the gRPC lane. app/rpc/h2/server.py reads and writes
HTTP/2 frames (RFC 9113) with these helpers. Only framing lives here: frame types, flags,
settings identifiers, frame building, and hpack decoding that reuses decoded blocks. The
benchmark's gRPC client has its own (bench/http2_wire.py), so the two ends check each other.
"""

from __future__ import annotations

import struct

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY_FRAME, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20
# SETTINGS identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
# Error codes (RST_STREAM, GOAWAY).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME_BYTES = 16_384
MAX_WINDOW = 2**31 - 1
FRAME_HEADER_BYTES = 9
# gRPC error replies can carry long grpc-message texts: hpack's 64 KiB default would end
# the connection on one.
MAX_HEADER_LIST_BYTES = 16 << 20
# Decoded header blocks kept for reuse: a connection's calls repeat a handful.
MEMO_ENTRIES = 64
MEMO_BLOCK_BYTES = 256

_HEADER = struct.Struct(">IBBI")
_U32 = struct.Struct(">I")


def frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    return _HEADER.pack(len(payload), kind, flags, stream_id)[1:] + payload


def u32(value: int) -> bytes:
    return _U32.pack(value)


def settings_payload(settings: dict[int, int]) -> bytes:
    return b"".join(struct.pack(">HI", key, value) for key, value in settings.items())


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """A SETTINGS payload as (identifier, value) pairs; ValueError when its length is not a
    multiple of 6 (a FRAME_SIZE_ERROR)."""
    if len(payload) % 6:
        raise ValueError("SETTINGS payload length is not a multiple of 6")
    return [struct.unpack_from(">HI", payload, offset) for offset in range(0, len(payload), 6)]


def strip_padding(flags: int, payload: bytes) -> bytes:
    """A HEADERS or DATA payload without its padding (and a HEADERS' priority fields)."""
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise ValueError("padding longer than the frame")
        payload = payload[1 : len(payload) - payload[0]]
    return payload


def literal_block(fields: list[tuple[str, str]]) -> bytes:
    """Header fields as "literal never indexed": the block has no effect on the peer's
    dynamic table, so it can be built once and sent on any stream of any connection.
    Huffman coding is off: hpack's encoder takes time quadratic in a value's length, and
    error texts can be long."""
    encoder = hpack.Encoder()
    return bytes(encoder.encode([(name, value, True) for name, value in fields], huffman=False))


class HeaderDecoder:
    """hpack decoding with memoized blocks.

    A block whose decoding left the dynamic table as it was (only indexed fields, or literals
    without indexing) means the same headers for as long as the table stays unchanged, so it
    is stored; any block that changes the table drops the stored ones.
    """

    def __init__(self, max_header_list_bytes: int = MAX_HEADER_LIST_BYTES) -> None:
        self.decoder = hpack.Decoder(max_header_list_size=max_header_list_bytes)
        self.known: dict[bytes, list[tuple[str, str]]] = {}

    def _table_state(self) -> tuple[int, int, object]:
        table = self.decoder.header_table
        entries = table.dynamic_entries
        return len(entries), table.maxsize, entries[0] if entries else None

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        headers = self.known.get(block)
        if headers is not None:
            return headers
        before = self._table_state()
        # raw: a value that is not UTF-8 must not end the connection; gRPC metadata is ASCII.
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in self.decoder.decode(block, raw=True)
        ]
        after = self._table_state()
        # Identity, not equality, for the newest entry: a repeated insert makes a new tuple.
        if before[:2] != after[:2] or before[2] is not after[2]:
            self.known.clear()
        elif len(block) <= MEMO_BLOCK_BYTES:
            if len(self.known) >= MEMO_ENTRIES:
                self.known.clear()
            self.known[block] = headers
        return headers
