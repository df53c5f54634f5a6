"""bench/http2_wire.py, the load generator's own HTTP/2 framing: frames byte for byte as
RFC 9113 lays them out, SETTINGS, HEADERS fragments, and which HPACK blocks keep the table."""

from __future__ import annotations

import hpack
import pytest

from bench import http2_wire as wire


def test_frames_are_laid_out_as_rfc_9113_section_4_1() -> None:
    assert wire.frame(wire.SETTINGS, wire.ACK, 0) == bytes.fromhex("000000" "04" "01" "00000000")
    assert wire.frame(wire.DATA, wire.END_STREAM, 3, memoryview(b"abc")) == (
        bytes.fromhex("000003" "00" "01" "00000003") + b"abc"
    )
    big = bytes(70_000)  # a length needs all three bytes
    assert wire.frame(wire.DATA, 0, 2**31 - 1, big)[:9] == bytes.fromhex("011170" "00" "00"
                                                                          "7fffffff")
    assert wire.PREFACE == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_settings_round_trip_and_a_bad_length_is_refused() -> None:
    payload = wire.encode_settings({wire.SETTINGS_ENABLE_PUSH: 0,
                                    wire.SETTINGS_INITIAL_WINDOW_SIZE: wire.MAX_WINDOW})
    assert payload == bytes.fromhex("0002" "00000000" "0004" "7fffffff")
    assert wire.decode_settings(payload) == [(2, 0), (4, 2**31 - 1)]
    assert wire.decode_settings(b"") == []
    with pytest.raises(ValueError, match="multiple of 6"):
        wire.decode_settings(payload[:-1])


@pytest.mark.parametrize(
    ("flags", "payload", "fragment"),
    [
        (wire.END_HEADERS, b"\x88", b"\x88"),
        (wire.PADDED, b"\x02\x88\x00\x00", b"\x88"),
        (wire.PRIORITY, b"\x00\x00\x00\x01\x10\x88", b"\x88"),
        (wire.PADDED | wire.PRIORITY, b"\x01\x00\x00\x00\x01\x10\x88\x00", b"\x88"),
    ],
)
def test_header_fragment_drops_padding_and_priority(
    flags: int, payload: bytes, fragment: bytes
) -> None:
    assert wire.header_fragment(flags, payload) == fragment


@pytest.mark.parametrize("payload", [b"", b"\x05\x88", b"\x03\x00\x00\x00\x01"])
def test_header_fragment_with_more_padding_than_frame_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        wire.header_fragment(wire.PADDED | (wire.PRIORITY if len(payload) > 2 else 0), payload)


def test_keeps_table_reads_each_hpack_representation() -> None:
    encoder = hpack.Encoder()
    long_value = "x" * 300  # string length > 127: a multi-byte HPACK integer
    assert wire.keeps_table(b"\x88")  # indexed :status 200
    assert wire.keeps_table(encoder.encode([("grpc-message", long_value, True)]))  # never indexed
    assert wire.keeps_table(encoder.encode([(":status", "200"), ("grpc-status", "0", True)]))
    without_indexing = b"\x00\x01a\x01b"  # literal without indexing, new name
    assert wire.keeps_table(without_indexing)
    assert not wire.keeps_table(hpack.Encoder().encode([("grpc-status", "0")]))  # indexed insert
    assert not wire.keeps_table(b"\x3f\xe1\x1f")  # dynamic table size update
    assert not wire.keeps_table(without_indexing[:-1])  # cut short


def test_header_decoder_caches_only_table_neutral_blocks() -> None:
    encoder = hpack.Encoder()
    decoder = wire.HeaderDecoder()
    inserting = encoder.encode([("grpc-status", "0")])
    assert decoder.decode(inserting) == [("grpc-status", "0")]
    assert not decoder.known
    indexed = encoder.encode([("grpc-status", "0")])
    assert decoder.decode(indexed) == [("grpc-status", "0")]
    assert decoder.known == {indexed: [("grpc-status", "0")]}
    # a header value that is not UTF-8 still decodes
    raw = hpack.Encoder().encode([(b"x-bin", b"\xff\xfe", True)])
    assert decoder.decode(raw) == [("x-bin", "\xff\xfe")]
