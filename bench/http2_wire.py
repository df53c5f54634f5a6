"""HTTP/2 on the wire (RFC 9113, HPACK RFC 7541) for the load generator's gRPC client.

Data path position: under bench/grpc_h2.py, which builds its frames and reads the server's
with these. Written for the client side alone and apart from the server's transport
(app/rpc/h2/): a framing mistake shared by both ends would pass every benchmark unnoticed,
so the client must not reuse the server's code.
"""

from __future__ import annotations

import struct

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 section 3.4

# Frame types (section 6).
DATA = 0x0
HEADERS = 0x1
RST_STREAM = 0x3
SETTINGS = 0x4
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags; one bit means different things on different frame types.
ACK = 0x1  # SETTINGS, PING
END_STREAM = 0x1  # DATA, HEADERS
END_HEADERS = 0x4  # HEADERS, CONTINUATION
PADDED = 0x8  # DATA, HEADERS
PRIORITY = 0x20  # HEADERS: 5 bytes of stream dependency and weight lead the fragment

# SETTINGS parameters (section 6.5.2).
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

# Error codes (section 7) the client sends or tells apart.
REFUSED_STREAM = 0x7
CANCEL = 0x8

DEFAULT_WINDOW = 65_535  # every window's size before SETTINGS or WINDOW_UPDATE change it
MAX_WINDOW = 0x7FFF_FFFF  # the largest window, and the mask of a 31-bit stream id
FRAME_HEADER_BYTES = 9

_SETTING = struct.Struct(">HI")  # 16-bit identifier, 32-bit value
_FRAME_HEADER = struct.Struct(">BHBBI")  # 24-bit length as 8 + 16 bits, type, flags, stream

# A gRPC error reply can carry a long grpc-message; hpack's own default limit (64 KiB) would
# fail the whole connection on one.
MAX_HEADER_LIST_BYTES = 16 << 20
# Reply header blocks worth remembering: a server's replies repeat a few short ones.
CACHED_BLOCKS = 64
CACHED_BLOCK_MAX_BYTES = 256


def frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    """One frame: 24-bit payload length, type, flags, 31-bit stream id, payload."""
    size = len(payload)
    return _FRAME_HEADER.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id & MAX_WINDOW) + payload


def encode_settings(values: dict[int, int]) -> bytes:
    """A SETTINGS payload: six bytes per parameter."""
    return b"".join(_SETTING.pack(identifier, value) for identifier, value in values.items())


def decode_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) parameters of a SETTINGS payload, in order."""
    if len(payload) % _SETTING.size:
        raise ValueError(f"SETTINGS payload of {len(payload)} bytes (a multiple of 6 expected)")
    return list(_SETTING.iter_unpack(payload))


def header_fragment(flags: int, payload: bytes) -> bytes:
    """The header block fragment a HEADERS frame carries, without its padding and priority."""
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise ValueError("PADDED HEADERS frame without a pad length")
        start, end = 1, len(payload) - payload[0]
    if flags & PRIORITY:
        start += 5
    if end < start:
        raise ValueError("HEADERS padding and priority longer than the frame")
    return payload[start:end]


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 section 5.1) at `pos`: (value, position after it)."""
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        octet = block[pos]
        pos += 1
        value += (octet & 0x7F) << shift
        shift += 7
        if not octet & 0x80:
            return value, pos


def _after_string(block: bytes, pos: int) -> int:
    """Position after an HPACK string literal (a length with a Huffman bit, then the bytes)."""
    length, pos = _integer(block, pos, 7)
    return pos + length


def keeps_table(block: bytes) -> bool:
    """Whether decoding `block` leaves the decoder's dynamic table as it was: it holds only
    indexed fields and literals without indexing or never indexed (RFC 7541 section 6). Such a
    block decodes to the same headers for as long as no other block changes the table."""
    pos, end = 0, len(block)
    try:
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field
                _, pos = _integer(block, pos, 7)
            elif first & 0x40 or first & 0x20:  # incremental indexing, or a table size update
                return False
            else:  # literal without indexing (0000) or never indexed (0001), 4-bit name index
                name_index, pos = _integer(block, pos, 4)
                if name_index == 0:
                    pos = _after_string(block, pos)
                pos = _after_string(block, pos)
    except IndexError:  # cut short: treat as changing the table (never cached)
        return False
    return pos == end


class HeaderDecoder:
    """HPACK decoding of the server's header blocks, with the table-neutral ones cached.

    `known` maps a block to its headers. It holds only blocks that do not change the dynamic
    table (keeps_table), and is emptied by any block that does: after that, the same bytes may
    name other headers.
    """

    def __init__(self) -> None:
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_BYTES)
        self.known: dict[bytes, list[tuple[str, str]]] = {}

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        cached = self.known.get(block)
        if cached is not None:
            return cached
        # bytes in, latin-1 out: a value that is not UTF-8 is still a header, not an error
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self.decoder.decode(block, raw=True)
        ]
        if not keeps_table(block):
            self.known.clear()
        elif len(block) <= CACHED_BLOCK_MAX_BYTES:
            if len(self.known) >= CACHED_BLOCKS:
                self.known.clear()
            self.known[block] = headers
        return headers
