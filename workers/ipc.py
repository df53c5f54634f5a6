"""Shared-memory tensor transport between the gateway and a worker, used by both sides.

Data path: the gateway writes a batch's input tensors into its worker's request arena and
sends a small WorkerRequest header (proto/worker.proto) over a pipe; the worker reads the
tensors in place, runs the model, writes the outputs into its response arena and sends a
WorkerReply header back. Tensor bytes are never pickled and never cross the pipe.

Ownership rules (single writer per region):
- request arena: the gateway allocates and frees (a region is free once its reply arrived);
  the worker only reads.
- response arena: the worker allocates; the gateway copies a reply's outputs out as soon as
  the reply arrives and then publishes the reply's `response_seq` in the arena header; the
  worker frees every allocation up to that sequence number before allocating again.
- a tensor that does not fit in its arena's free space travels in a one-off segment that the
  reader unlinks after reading.
Linux only: segments are files in /dev/shm mapped with mmap.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import mmap
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Sequence

import ml_dtypes
import numpy as np

from proto import worker_pb2

SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "tfgate."
ALIGN_BYTES = 64
# Arena header: bytes [0, 8) hold the last response_seq the gateway has consumed.
ARENA_HEADER_BYTES = 64
_SEQ = struct.Struct("<Q")
_FRAME_HEADER = struct.Struct("<I")
DT_STRING = 7

# TF DataType enum -> numpy dtype, for the dtypes whose values travel as raw little-endian
# buffers: the one table, read by the workers and by the gateway (app/core/types.py).
# numpy has no bfloat16: ml_dtypes' is the one TensorFlow itself hands out and takes as feeds
# (2 bytes, the upper half of a float32), so DT_BFLOAT16 crosses like any numeric dtype.
NUMPY_DTYPE_BY_TF: dict[int, np.dtype] = {
    1: np.dtype(np.float32),  # DT_FLOAT
    2: np.dtype(np.float64),  # DT_DOUBLE
    3: np.dtype(np.int32),  # DT_INT32
    4: np.dtype(np.uint8),  # DT_UINT8
    5: np.dtype(np.int16),  # DT_INT16
    6: np.dtype(np.int8),  # DT_INT8
    8: np.dtype(np.complex64),  # DT_COMPLEX64
    9: np.dtype(np.int64),  # DT_INT64
    10: np.dtype(np.bool_),  # DT_BOOL
    14: np.dtype(ml_dtypes.bfloat16),  # DT_BFLOAT16
    17: np.dtype(np.uint16),  # DT_UINT16
    18: np.dtype(np.complex128),  # DT_COMPLEX128
    19: np.dtype(np.float16),  # DT_HALF
    22: np.dtype(np.uint32),  # DT_UINT32
    23: np.dtype(np.uint64),  # DT_UINT64
}
TF_DTYPE_BY_NUMPY: dict[np.dtype, int] = {v: k for k, v in NUMPY_DTYPE_BY_TF.items()}


class ArenaFull(Exception):
    """No room in an arena and no room for a one-off segment either."""


class Arena:
    """A named shared-memory segment mapped into this process."""

    def __init__(self, name: str, nbytes: int, mapping: mmap.mmap) -> None:
        self.name = name
        self.nbytes = nbytes
        self._mmap = mapping
        self.buf = memoryview(mapping)

    @classmethod
    def create(cls, name: str, nbytes: int) -> Arena:
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # Reserve the pages now: on a full tmpfs a lazily grown mapping would SIGBUS
            # later; here it fails cleanly with ENOSPC.
            os.posix_fallocate(fd, 0, nbytes)
            mapping = mmap.mmap(fd, nbytes)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        os.close(fd)
        return cls(name, nbytes, mapping)

    @classmethod
    def attach(cls, name: str) -> Arena:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        try:
            nbytes = os.fstat(fd).st_size
            mapping = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        return cls(name, nbytes, mapping)

    def close(self) -> None:
        self.buf.release()
        with contextlib.suppress(BufferError):
            # BufferError: a numpy view still points into the mapping; it stays mapped
            # until that view is garbage collected.
            self._mmap.close()

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, self.name))

    # The response arena's header: last consumed response sequence number. An aligned
    # 8-byte store is a single instruction on x86-64 and arm64, so the reader never
    # sees a torn value.
    def read_seq(self) -> int:
        return _SEQ.unpack_from(self.buf, 0)[0]

    def write_seq(self, seq: int) -> None:
        _SEQ.pack_into(self.buf, 0, seq)


def segment_name(owner_pid: int, tag: str) -> str:
    return f"{SEGMENT_PREFIX}{owner_pid}.{tag}.{uuid.uuid4().hex[:12]}"


def reclaim_stale_segments() -> list[str]:
    """Unlink segments left behind by tfgate processes that no longer run."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(SHM_DIR):
            if not entry.startswith(SEGMENT_PREFIX):
                continue
            pid_text = entry[len(SEGMENT_PREFIX) :].split(".", 1)[0]
            if not (pid_text.isascii() and pid_text.isdigit()) or _pid_alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM_DIR, entry))
                removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RingAllocator:
    """First-in-first-out allocator over [start, end) of an arena.

    Regions are handed out in ring order and reclaimed from the oldest; a region freed
    out of order is reclaimed once everything older is free too. Not thread-safe: each
    arena has exactly one allocating side.
    """

    def __init__(self, start: int, end: int) -> None:
        self._start = start
        self._end = end
        self._head = start  # next free byte
        self._live: collections.OrderedDict[int, list[int]] = collections.OrderedDict()

    @property
    def capacity(self) -> int:
        return self._end - self._start

    def alloc(self, nbytes: int) -> int | None:
        size = max(ALIGN_BYTES, -(-nbytes // ALIGN_BYTES) * ALIGN_BYTES)
        if size > self.capacity:
            return None
        if not self._live:
            self._head = self._start
            return self._take(self._start, size)
        tail = next(iter(self._live))  # oldest live region
        if self._head > tail:  # free space is [head, end) and [start, tail)
            if self._head + size <= self._end:
                return self._take(self._head, size)
            if self._start + size <= tail:  # wrap around
                return self._take(self._start, size)
            return None
        # head <= tail: free space is [head, tail)
        if self._head + size <= tail:
            return self._take(self._head, size)
        return None

    def _take(self, offset: int, size: int) -> int:
        self._live[offset] = [size, 0]
        self._head = offset + size
        return offset

    def free(self, offset: int) -> None:
        entry = self._live.get(offset)
        if entry is None:
            return
        entry[1] = 1
        while self._live:
            oldest, (_, done) = next(iter(self._live.items()))
            if not done:
                break
            del self._live[oldest]

    def reset(self) -> None:
        self._live.clear()
        self._head = self._start

    def __len__(self) -> int:
        return len(self._live)


@dataclasses.dataclass(slots=True)
class Written:
    """What put_tensors placed: the refs for the header and what to release afterwards."""

    refs: list[worker_pb2.TensorRef]
    offsets: list[int]
    segments: list[str]


def string_region_nbytes(flat: Sequence[bytes]) -> int:
    return 8 * len(flat) + sum(len(b) for b in flat)


def _as_bytes_list(array: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else bytes(v) for v in array.reshape(-1).tolist()]


def put_tensors(
    arena: Arena,
    allocator: RingAllocator,
    aliases: Iterable[str],
    parts: Sequence[dict[str, np.ndarray]],
    owner_pid: int,
    pad_rows: int = 0,
    inner_shapes: dict[str, tuple[int, ...]] | None = None,
) -> Written:
    """Write each alias's tensor, the row-wise concatenation of `parts`, into the arena.

    `pad_rows` extra rows (copies of the last row) are appended, for allowed_batch_sizes.
    `inner_shapes` (pad_variable_length_inputs) gives an alias's padded inner dims: each
    part is padded at the end of every inner dim with its own first element, as TF
    Serving's batching_util.cc pads. A tensor that does not fit the arena's free space goes
    to a one-off segment.
    """
    written = Written([], [], [])
    for alias in aliases:
        arrays = [p[alias] for p in parts]
        inner = inner_shapes.get(alias) if inner_shapes else None
        if arrays[0].dtype == object:
            if inner is not None:
                arrays = [pad_inner(a, inner) for a in arrays]
            ref = _put_strings(arena, allocator, alias, arrays, owner_pid, pad_rows, written)
        else:
            ref = _put_numeric(
                arena, allocator, alias, arrays, owner_pid, pad_rows, written, inner
            )
        written.refs.append(ref)
    return written


def pad_inner(array: np.ndarray, inner: tuple[int, ...]) -> np.ndarray:
    """array padded at the end of each inner dim up to `inner`, with its first element."""
    if array.shape[1:] == inner:
        return array
    out = np.full((array.shape[0], *inner), array.flat[0], dtype=array.dtype)
    _copy_into(out, array)
    return out


def _copy_into(out: np.ndarray, array: np.ndarray) -> None:
    out[(slice(None), *(slice(0, d) for d in array.shape[1:]))] = array


def _place(
    arena: Arena,
    allocator: RingAllocator,
    nbytes: int,
    owner_pid: int,
    written: Written,
    fill: Callable[[memoryview], None],
) -> tuple[int, str]:
    """Find room for nbytes (arena, else a one-off segment), fill it; return (offset, segment)."""
    offset = allocator.alloc(nbytes)
    if offset is not None:
        written.offsets.append(offset)
        fill(arena.buf[offset : offset + nbytes])
        return offset, ""
    name = segment_name(owner_pid, "oneoff")
    segment = Arena.create(name, max(nbytes, 1))
    written.segments.append(name)
    try:
        view = segment.buf[:nbytes]
        fill(view)
        view.release()
    finally:
        segment.close()
    return 0, name


def _put_numeric(
    arena: Arena,
    allocator: RingAllocator,
    alias: str,
    arrays: list[np.ndarray],
    owner_pid: int,
    pad_rows: int,
    written: Written,
    inner: tuple[int, ...] | None = None,
) -> worker_pb2.TensorRef:
    first = arrays[0]
    dtype = first.dtype
    if len(arrays) == 1 and not pad_rows and inner is None:
        shape = first.shape
    else:
        rows = sum(a.shape[0] for a in arrays) + pad_rows
        shape = (rows, *(first.shape[1:] if inner is None else inner))
    nbytes = math.prod(shape) * dtype.itemsize

    def fill(view: memoryview) -> None:
        if not nbytes:
            return
        out = np.frombuffer(view, dtype=dtype, count=nbytes // dtype.itemsize).reshape(shape)
        if len(arrays) == 1 and not pad_rows and inner is None:
            out[...] = first
            return
        row = 0
        for a in arrays:
            target = out[row : row + a.shape[0]]
            if a.shape[1:] == shape[1:]:
                target[...] = a
            else:  # ragged part: its own first element fills the padding
                target[...] = a.flat[0]
                _copy_into(target, a)
            row += a.shape[0]
        if pad_rows:
            out[row:] = out[row - 1]

    offset, segment = _place(arena, allocator, nbytes, owner_pid, written, fill)
    return worker_pb2.TensorRef(
        alias=alias,
        dtype=TF_DTYPE_BY_NUMPY[dtype],
        shape=shape,
        offset=offset,
        nbytes=nbytes,
        segment=segment,
    )


def _put_strings(
    arena: Arena,
    allocator: RingAllocator,
    alias: str,
    arrays: list[np.ndarray],
    owner_pid: int,
    pad_rows: int,
    written: Written,
) -> worker_pb2.TensorRef:
    flat: list[bytes] = []
    for a in arrays:
        flat.extend(_as_bytes_list(a))
    if len(arrays) == 1 and not pad_rows:
        shape = arrays[0].shape
    else:
        rows = sum(a.shape[0] for a in arrays)
        inner = arrays[0].shape[1:]
        per_row = math.prod(inner)
        if pad_rows and rows:
            flat.extend(flat[-per_row:] * pad_rows if per_row else [])
        shape = (rows + pad_rows, *inner)
    nbytes = string_region_nbytes(flat)

    def fill(view: memoryview) -> None:
        count = len(flat)
        lengths = np.frombuffer(view, dtype="<u8", count=count)
        lengths[:] = [len(b) for b in flat]
        view[8 * count : nbytes] = b"".join(flat)

    offset, segment = _place(arena, allocator, nbytes, owner_pid, written, fill)
    return worker_pb2.TensorRef(
        alias=alias, dtype=DT_STRING, shape=shape, offset=offset, nbytes=nbytes, segment=segment
    )


def get_tensors(
    arena: Arena, refs: Iterable[worker_pb2.TensorRef], *, copy: bool
) -> dict[str, np.ndarray]:
    """Read tensors described by refs. copy=False returns views into the arena (worker side,
    valid until the region is freed); one-off segments are always copied and unlinked."""
    out: dict[str, np.ndarray] = {}
    for ref in refs:
        if ref.segment:
            segment = Arena.attach(ref.segment)
            try:
                out[ref.alias] = _read(segment.buf, 0, ref, copy=True)
            finally:
                segment.close()
                segment.unlink()
        else:
            out[ref.alias] = _read(arena.buf, ref.offset, ref, copy=copy)
    return out


def _read(buf: memoryview, offset: int, ref: worker_pb2.TensorRef, *, copy: bool) -> np.ndarray:
    shape = tuple(ref.shape)
    if ref.dtype == DT_STRING:
        count = math.prod(shape)
        lengths = np.frombuffer(buf, dtype="<u8", count=count, offset=offset)
        data = bytes(buf[offset + 8 * count : offset + ref.nbytes])
        result = np.empty(count, dtype=object)
        pos = 0
        for i, n in enumerate(lengths.tolist()):
            result[i] = data[pos : pos + n]
            pos += n
        return result.reshape(shape)
    dtype = NUMPY_DTYPE_BY_TF[ref.dtype]
    array = np.frombuffer(buf, dtype=dtype, count=ref.nbytes // dtype.itemsize, offset=offset)
    array = array.reshape(shape)
    return array.copy() if copy else array


# --- control channel framing: 4-byte little-endian length, then a serialized message ---


def frame(payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(len(payload)) + payload


class FrameBuffer:
    """Reassembles frames from a non-blocking byte stream (gateway side)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= 4:
            (length,) = _FRAME_HEADER.unpack_from(self._buffer, 0)
            if len(self._buffer) < 4 + length:
                break
            frames.append(bytes(self._buffer[4 : 4 + length]))
            del self._buffer[: 4 + length]
        return frames


def send_frame(fd: int, payload: bytes) -> None:
    """Blocking write of one frame (worker side)."""
    data = memoryview(frame(payload))
    while data:
        written = os.write(fd, data)
        data = data[written:]


def recv_frame(fd: int) -> bytes | None:
    """Blocking read of one frame (worker side); None at end of stream."""
    header = _read_exact(fd, 4)
    if header is None:
        return None
    (length,) = _FRAME_HEADER.unpack(header)
    return _read_exact(fd, length) if length else b""


def _read_exact(fd: int, count: int) -> bytes | None:
    chunks = []
    while count:
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)
