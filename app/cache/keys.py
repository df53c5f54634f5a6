"""The result cache's pure parts: key layout, entry codec, row split/merge, Cache-Control.

Data path position: service -> cache.run() -> (these functions) -> Redis. Nothing here does
I/O, so the rules that decide correctness (what goes into a key, what an entry holds, how
cached rows and model rows are merged back in order) are small functions with table-driven
tests (tests/unit/cache/test_cache_keys.py).

Key: ``tfgate:c1:<model>:<version>:<blake2b-256 hex>``. The digest covers the kind (row or
whole request), model name, resolved version, signature, the resolved output aliases in
order, and per input (sorted by name) its name, dtype, shape and bytes. Model and version
are repeated in clear so an operator can SCAN/delete one model's or one version's entries.
Entry: a small binary header, then per output its alias, dtype, shape and raw bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import math
import struct
from collections.abc import Sequence

import ml_dtypes
import numpy as np

# Every key starts with KEY_PREFIX; "c1" is the key+entry format version: bump it when the
# digest input or the entry layout changes, so old entries are simply never read again.
KEY_PREFIX = b"tfgate:c1:"
ENTRY_MAGIC = b"TGC1"
DIGEST_BYTES = 32  # blake2b-256: collisions are not a practical concern (Triton's is 64-bit)
_PERSON = b"tfgate-cache"  # blake2b personalisation: domain-separates tfgate's digests

KIND_ROW = b"R"  # one key per row (dim 0) of a row-batchable request
KIND_WHOLE = b"W"  # one key for a whole request that cannot be split into rows

# dtypes an entry may carry: plain numeric/bool numpy dtypes, plus "O" for DT_STRING
# (object arrays of bytes). Anything else in an entry is treated as corrupt.
_OBJECT = "O"
_NUMERIC_KINDS = frozenset("biufc")
# DT_BFLOAT16 (workers/ipc.py): ml_dtypes' bfloat16 is numpy kind "V" and its dtype string
# "<V2" would read back as plain void; it goes by its name instead.
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_BFLOAT16_TEXT = "bfloat16"

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_HEADER = struct.Struct("<4sH")  # magic, output count
_OUTPUT = struct.Struct("<HBB")  # alias length, dtype-string length, ndim


class EntryError(ValueError):
    """A cached entry cannot be decoded (corrupt, foreign or from another format)."""


# --- request policy (Cache-Control) ---


class CachePolicy(enum.Enum):
    """What one request allows: read cached rows, write computed rows."""

    DEFAULT = (True, True)
    NO_CACHE = (False, True)  # don't answer from the cache, but refresh it
    NO_STORE = (False, False)  # leave the cache alone entirely

    @property
    def read(self) -> bool:
        return self.value[0]

    @property
    def write(self) -> bool:
        return self.value[1]


def parse_cache_control(value: str | None) -> CachePolicy:
    """HTTP `Cache-Control` request directives (or gRPC `cache-control` metadata) -> policy.
    no-store wins over no-cache; `max-age=0` means no-cache, as it does for HTTP caches.
    Unknown directives are ignored."""
    if not value:
        return CachePolicy.DEFAULT
    policy = CachePolicy.DEFAULT
    for directive in value.split(","):
        name, _, argument = directive.strip().partition("=")
        name = name.strip().lower()
        if name == "no-store":
            return CachePolicy.NO_STORE
        if name == "no-cache" or (name == "max-age" and argument.strip().strip('"') == "0"):
            policy = CachePolicy.NO_CACHE
    return policy


# --- keys ---


@dataclasses.dataclass(frozen=True, slots=True)
class KeyContext:
    """What every key of one request shares besides its input bytes."""

    model: str
    version: int
    signature: str
    output_aliases: tuple[str, ...]  # resolved, in the order the outputs are returned
    # registry.VersionRecord.fingerprint: the loaded files' digest, so a version replaced
    # in place (model sync, a swapped directory) never answers from the old files' entries
    fingerprint: bytes = b""


def _field(hasher: hashlib._Hash, data: bytes) -> None:
    # Length-prefixed so that no two different field sequences hash the same bytes.
    hasher.update(_U64.pack(len(data)))
    hasher.update(data)


def _dtype_text(array: np.ndarray) -> str:
    dtype = array.dtype
    if dtype == _BFLOAT16:
        return _BFLOAT16_TEXT
    return _OBJECT if dtype.kind == "O" else dtype.str


def _shape_bytes(shape: Sequence[int]) -> bytes:
    return _U32.pack(len(shape)) + b"".join(_I64.pack(int(d)) for d in shape)


def _prefix_hasher(
    context: KeyContext, kind: bytes, inputs: dict[str, np.ndarray], shapes: dict[str, tuple]
) -> hashlib._Hash:
    """A hasher fed everything but the input bytes; the caller must copy() it."""
    layout = tuple((name, _dtype_text(inputs[name]), shapes[name]) for name in sorted(inputs))
    return _cached_prefix(context, kind, layout)


# Requests of one model repeat the same prefix; hashing it once saves a third of a hit's
# key-building time. Keyed by value (hashable, immutable), so entries are never stale.
@functools.lru_cache(maxsize=4096)
def _cached_prefix(
    context: KeyContext, kind: bytes, layout: tuple[tuple[str, str, tuple], ...]
) -> hashlib._Hash:
    hasher = hashlib.blake2b(digest_size=DIGEST_BYTES, person=_PERSON)
    _field(hasher, kind)
    _field(hasher, context.model.encode("utf-8", "surrogateescape"))
    _field(hasher, _I64.pack(context.version))
    _field(hasher, context.fingerprint)
    _field(hasher, context.signature.encode("utf-8", "surrogateescape"))
    _field(hasher, _U32.pack(len(context.output_aliases)))
    for alias in context.output_aliases:
        _field(hasher, alias.encode("utf-8", "surrogateescape"))
    _field(hasher, _U32.pack(len(layout)))
    for name, dtype_text, shape in layout:
        _field(hasher, name.encode("utf-8", "surrogateescape"))
        _field(hasher, dtype_text.encode())
        _field(hasher, _shape_bytes(shape))
    return hasher


@functools.lru_cache(maxsize=4096)
def _key_head(context: KeyContext) -> bytes:
    return KEY_PREFIX + f"{context.model}:{context.version}:".encode("utf-8", "surrogateescape")


def _redis_key(context: KeyContext, digest: str) -> bytes:
    return _key_head(context) + digest.encode()


def _hash_object_values(hasher: hashlib._Hash, values: np.ndarray) -> None:
    _field(hasher, _U64.pack(values.size))
    for value in values.ravel():
        _field(hasher, _as_bytes(value))


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise EntryError(f"unsupported string tensor element {type(value).__name__}")


def row_keys(context: KeyContext, inputs: dict[str, np.ndarray], rows: int) -> list[bytes]:
    """One key per row: the shared prefix (inner shapes, not the row count, so a row's key
    does not depend on how many rows it was sent with), then that row's bytes per input."""
    names = sorted(inputs)
    shapes = {name: inputs[name].shape[1:] for name in names}
    prefix = _prefix_hasher(context, KIND_ROW, inputs, shapes)
    arrays = [
        array if array.dtype.kind == "O" else np.ascontiguousarray(array)
        for array in (inputs[name] for name in names)
    ]
    head = _key_head(context)
    keys = []
    for row in range(rows):
        hasher = prefix.copy()
        for array in arrays:
            part = array[row : row + 1]
            if array.dtype.kind == "O":
                _hash_object_values(hasher, part)
            else:  # a C-contiguous view: hashed through the buffer protocol, no copy
                hasher.update(_U64.pack(part.nbytes))
                hasher.update(part)
        keys.append(head + hasher.hexdigest().encode())
    return keys


def whole_key(context: KeyContext, inputs: dict[str, np.ndarray]) -> bytes:
    """One key for a request that cannot be split into rows: full shapes and bytes."""
    shapes = {name: tuple(array.shape) for name, array in inputs.items()}
    hasher = _prefix_hasher(context, KIND_WHOLE, inputs, shapes).copy()
    for name in sorted(inputs):
        array = inputs[name]
        if array.dtype == object:
            _hash_object_values(hasher, np.asarray(array))
        else:
            _field(hasher, np.ascontiguousarray(array).tobytes())
    return _redis_key(context, hasher.hexdigest())


# --- entries ---


def encode_entry(outputs: dict[str, np.ndarray]) -> bytes:
    """Outputs (one row's, or a whole request's) -> compact binary: header, then per output
    alias, dtype, shape, and raw little-endian bytes (strings: u32 length + bytes each)."""
    parts = [_HEADER.pack(ENTRY_MAGIC, len(outputs))]
    for alias, array in outputs.items():
        alias_bytes = alias.encode("utf-8", "surrogateescape")
        if array.dtype == object:
            dtype_text = _OBJECT
            data = b"".join(_U32.pack(len(b)) + b for b in map(_as_bytes, array.ravel()))
        elif array.dtype == _BFLOAT16:
            dtype_text = _BFLOAT16_TEXT
            data = np.ascontiguousarray(array).view("<u2").tobytes()
        else:
            if array.dtype.kind not in _NUMERIC_KINDS:
                raise EntryError(f"output {alias} has unsupported dtype {array.dtype}")
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            dtype_text = little.dtype.str
            data = np.ascontiguousarray(little).tobytes()
        dtype_bytes = dtype_text.encode()
        parts.append(_OUTPUT.pack(len(alias_bytes), len(dtype_bytes), array.ndim))
        parts.append(alias_bytes)
        parts.append(dtype_bytes)
        parts.append(b"".join(_U64.pack(d) for d in array.shape))
        parts.append(_U64.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_entry(entry: bytes) -> dict[str, np.ndarray]:
    """The inverse of encode_entry; raises EntryError on anything malformed."""
    try:
        magic, count = _HEADER.unpack_from(entry, 0)
        if magic != ENTRY_MAGIC:
            raise EntryError("not a tfgate cache entry")
        pos = _HEADER.size
        outputs: dict[str, np.ndarray] = {}
        for _ in range(count):
            alias_len, dtype_len, ndim = _OUTPUT.unpack_from(entry, pos)
            pos += _OUTPUT.size
            alias = entry[pos : pos + alias_len].decode("utf-8", "surrogateescape")
            pos += alias_len
            dtype_text = entry[pos : pos + dtype_len].decode("ascii")
            pos += dtype_len
            shape = tuple(_U64.unpack_from(entry, pos + 8 * i)[0] for i in range(ndim))
            pos += 8 * ndim
            (size,) = _U64.unpack_from(entry, pos)
            pos += 8
            if pos + size > len(entry):
                raise EntryError("entry is truncated")
            outputs[alias] = _decode_array(entry[pos : pos + size], dtype_text, shape)
            pos += size
        if pos != len(entry):
            raise EntryError("trailing bytes after the last output")
        return outputs
    except (struct.error, UnicodeDecodeError, TypeError) as exc:
        raise EntryError(f"malformed entry: {exc}") from None


def _decode_array(data: bytes, dtype_text: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if dtype_text == _OBJECT:
        values = []
        pos = 0
        for _ in range(count):
            (length,) = _U32.unpack_from(data, pos)
            values.append(data[pos + 4 : pos + 4 + length])
            pos += 4 + length
        if pos != len(data):
            raise EntryError("string output length mismatch")
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype_text == _BFLOAT16_TEXT:
        if count * 2 != len(data):
            raise EntryError("numeric output length mismatch")
        return np.frombuffer(data, dtype="<u2", count=count).view(_BFLOAT16).reshape(shape)
    dtype = np.dtype(dtype_text)
    if dtype.kind not in _NUMERIC_KINDS or dtype.byteorder == ">":
        raise EntryError(f"unsupported dtype {dtype_text!r} in entry")
    if count * dtype.itemsize != len(data):
        raise EntryError("numeric output length mismatch")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


# --- rows ---


def take_rows(inputs: dict[str, np.ndarray], rows: Sequence[int]) -> dict[str, np.ndarray]:
    """The sub-request of the given rows, in that order (what is sent to the batcher)."""
    index = np.asarray(rows, dtype=np.intp)
    return {name: array[index] for name, array in inputs.items()}


def split_rows(outputs: dict[str, np.ndarray], rows: int) -> list[dict[str, np.ndarray]] | None:
    """Per-row outputs (views), or None when some output is not row-aligned (dim 0 differs
    from the row count): such a model's answers cannot be cached row by row."""
    for array in outputs.values():
        if array.ndim == 0 or array.shape[0] != rows:
            return None
    return [{alias: array[row] for alias, array in outputs.items()} for row in range(rows)]


def merge_rows(
    row_outputs: Sequence[dict[str, np.ndarray]], aliases: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """Stack per-row outputs back into one tensor per alias, in row order. None when the
    rows disagree (missing alias, dtype or inner shape): the caller then runs the whole
    request on the model instead of answering with a silently up-cast or ragged tensor."""
    if not row_outputs:
        return None
    merged: dict[str, np.ndarray] = {}
    for alias in aliases:
        parts = []
        first = row_outputs[0].get(alias)
        if first is None:
            return None
        for row in row_outputs:
            part = row.get(alias)
            if part is None or part.dtype != first.dtype or part.shape != first.shape:
                return None
            parts.append(part)
        # one row (the common case): a view with a new leading axis, no copy
        merged[alias] = parts[0][np.newaxis] if len(parts) == 1 else np.stack(parts)
    return merged
