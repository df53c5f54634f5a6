"""workers/ipc.py: ring allocation, tensors through shared memory, framing."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

from workers import ipc


def test_ring_allocator_fifo_and_wraparound() -> None:
    ring = ipc.RingAllocator(64, 64 + 64 * 4)  # room for four 64-byte regions
    offsets = [ring.alloc(10) for _ in range(4)]
    assert offsets == [64, 128, 192, 256]
    assert ring.alloc(1) is None  # full
    ring.free(offsets[0])
    assert ring.alloc(64) == 64  # wraps into the freed head
    ring.free(offsets[2])  # out of order: not reclaimed until 1 is free
    assert ring.alloc(64) is None
    ring.free(offsets[1])  # now 128 and 192 are reclaimed: [128, 256) is free
    assert ring.alloc(128) == 128
    assert ring.alloc(1) is None
    assert len(ring) == 3


def test_ring_allocator_rejects_oversize_and_reuses_when_empty() -> None:
    ring = ipc.RingAllocator(0, 256)
    assert ring.alloc(512) is None
    a = ring.alloc(200)
    ring.free(a)
    assert ring.alloc(256) == 0


@pytest.fixture
def arena():  # type: ignore[no-untyped-def]
    arena = ipc.Arena.create(ipc.segment_name(os.getpid(), "test"), 1 << 16)
    yield arena
    arena.close()
    arena.unlink()


def _roundtrip(arena: ipc.Arena, parts, pad_rows=0):  # type: ignore[no-untyped-def]
    ring = ipc.RingAllocator(ipc.ARENA_HEADER_BYTES, arena.nbytes)
    written = ipc.put_tensors(arena, ring, parts[0].keys(), parts, os.getpid(), pad_rows)
    return ipc.get_tensors(arena, written.refs, copy=True), written


@pytest.mark.parametrize(
    "dtype",
    [
        np.float32, np.float64, np.int8, np.int32, np.int64, np.uint64, np.bool_, np.float16,
        ml_dtypes.bfloat16,
    ],
)
def test_numeric_tensor_roundtrip(arena: ipc.Arena, dtype) -> None:  # type: ignore[no-untyped-def]
    a = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    out, _ = _roundtrip(arena, [{"x": a}])
    assert out["x"].dtype == a.dtype and out["x"].shape == a.shape
    np.testing.assert_array_equal(out["x"], a)


def test_parts_concatenate_rows_and_pad(arena: ipc.Arena) -> None:
    a = np.array([[1.0], [2.0]], np.float32)
    b = np.array([[3.0]], np.float32)
    out, _ = _roundtrip(arena, [{"x": a}, {"x": b}], pad_rows=2)
    np.testing.assert_array_equal(out["x"][:, 0], [1, 2, 3, 3, 3])


def test_string_tensor_roundtrip_and_padding(arena: ipc.Arena) -> None:
    a = np.array([[b"ab", b""], [b"\x00\xff", b"xyz"]], dtype=object)
    out, _ = _roundtrip(arena, [{"s": a}])
    assert out["s"].tolist() == a.tolist()
    out, _ = _roundtrip(arena, [{"s": a[:1]}, {"s": a[1:]}], pad_rows=1)
    assert out["s"].shape == (3, 2)
    assert out["s"][2].tolist() == [b"\x00\xff", b"xyz"]


def test_oversize_tensor_uses_one_off_segment(arena: ipc.Arena) -> None:
    big = np.ones(1 << 15, np.float32)  # 128 KiB > 64 KiB arena
    out, written = _roundtrip(arena, [{"big": big}])
    assert written.segments and not written.offsets
    np.testing.assert_array_equal(out["big"], big)
    # the reader unlinked the one-off segment
    assert not os.path.exists(os.path.join(ipc.SHM_DIR, written.segments[0]))


def test_arena_header_sequence(arena: ipc.Arena) -> None:
    assert arena.read_seq() == 0
    arena.write_seq(12345678901)
    assert ipc.Arena.attach(arena.name).read_seq() == 12345678901


def test_frames_reassemble_across_chunks() -> None:
    buffer = ipc.FrameBuffer()
    data = ipc.frame(b"hello") + ipc.frame(b"") + ipc.frame(b"x" * 10)
    frames = []
    for i in range(len(data)):
        frames.extend(buffer.feed(data[i : i + 1]))
    assert frames == [b"hello", b"", b"x" * 10]


def test_blocking_frames_over_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        ipc.send_frame(write_fd, b"abc")
        assert ipc.recv_frame(read_fd) == b"abc"
        os.close(write_fd)
        write_fd = -1
        assert ipc.recv_frame(read_fd) is None
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_reclaim_stale_segments_only_removes_dead_owners() -> None:
    dead_pid = 2**22 + 12345  # above pid_max defaults; never alive
    stale = ipc.Arena.create(ipc.segment_name(dead_pid, "stale"), 4096)
    mine = ipc.Arena.create(ipc.segment_name(os.getpid(), "live"), 4096)
    try:
        removed = ipc.reclaim_stale_segments()
        assert stale.name in removed
        assert os.path.exists(os.path.join(ipc.SHM_DIR, mine.name))
    finally:
        for a in (stale, mine):
            a.close()
            a.unlink()


def test_ragged_inner_dims_are_padded_with_each_parts_first_element(arena: ipc.Arena) -> None:
    # TF Serving's batching_util.cc pads every inner dim at its end with the tensor's own
    # first value (not zeros).
    a = np.array([[5, 6]], np.int32)
    b = np.array([[7, 8, 9], [1, 2, 3]], np.int32)
    ring = ipc.RingAllocator(ipc.ARENA_HEADER_BYTES, arena.nbytes)
    written = ipc.put_tensors(
        arena, ring, ["x"], [{"x": a}, {"x": b}], os.getpid(), 0, {"x": (3,)}
    )
    out = ipc.get_tensors(arena, written.refs, copy=True)["x"]
    np.testing.assert_array_equal(out, [[5, 6, 5], [7, 8, 9], [1, 2, 3]])


def test_ragged_padding_of_rank_3_and_strings(arena: ipc.Arena) -> None:
    a = np.ones((1, 1, 2), np.float32)
    b = np.full((1, 2, 1), 3.0, np.float32)
    s1 = np.array([[b"a"]], dtype=object)
    s2 = np.array([[b"b", b"c"]], dtype=object)
    ring = ipc.RingAllocator(ipc.ARENA_HEADER_BYTES, arena.nbytes)
    written = ipc.put_tensors(
        arena, ring, ["x", "s"], [{"x": a, "s": s1}, {"x": b, "s": s2}], os.getpid(), 0,
        {"x": (2, 2), "s": (2,)},
    )
    out = ipc.get_tensors(arena, written.refs, copy=True)
    np.testing.assert_array_equal(out["x"][0], [[1, 1], [1, 1]])
    np.testing.assert_array_equal(out["x"][1], [[3, 3], [3, 3]])
    assert out["s"].tolist() == [[b"a", b"a"], [b"b", b"c"]]


def test_bfloat16_has_a_numpy_dtype_both_ways(arena: ipc.Arena) -> None:
    # DT_BFLOAT16 (14) crosses as ml_dtypes' bfloat16, the array TensorFlow takes and returns.
    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert ipc.NUMPY_DTYPE_BY_TF[14] == bf16 and ipc.TF_DTYPE_BY_NUMPY[bf16] == 14
    a = np.array([[0x3F80, 0xC000], [0x3DCD, 0x7F80]], np.uint16).view(bf16)
    out, written = _roundtrip(arena, [{"x": a[:1]}, {"x": a[1:]}], pad_rows=1)
    assert written.refs[0].dtype == 14 and written.refs[0].nbytes == 3 * 2 * 2
    # two parts concatenated, then the last row repeated once (pad_rows)
    assert out["x"].view(np.uint16).tolist() == [
        [0x3F80, 0xC000], [0x3DCD, 0x7F80], [0x3DCD, 0x7F80]
    ]
