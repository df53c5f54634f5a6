"""V2 tensors as raw bytes <-> numpy: Triton's binary tensor data extension (REST) and the
gRPC `raw_input_contents` / `raw_output_contents` fields share this one layout.

Data path: codec/v2_json.py (binary_data parts of a REST body) and codec/v2_proto.py (raw
contents) call decode_raw() per input and encode_raw() per output. Layout: row-major,
little-endian; BOOL one byte per element; BYTES elements each a 4-byte little-endian length
then the bytes. Every size is checked against the declared shape (and the request's tensor
budget) before an array is built (DESIGN rule 8). Pure functions; thread-safe.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from app.codec.tensor import TensorBudget
from app.codec.v2_datatypes import (
    BYTES_LENGTH_PREFIX,
    element_count,
    shape_text,
    wire_dtype,
)
from app.core.errors import invalid_argument
from app.core.types import DT_BOOL, DT_STRING

_LENGTH = struct.Struct("<I")


def decode_raw(
    raw: bytes | memoryview,
    datatype: str,
    tf_dtype: int,
    shape: Sequence[int],
    what: str,
    budget: TensorBudget,
) -> np.ndarray:
    """One input's raw bytes as a tensor of `shape`. Numeric data must be exactly
    elements * itemsize bytes; BYTES data exactly `elements` length-prefixed elements."""
    count = element_count(shape)
    if tf_dtype == DT_STRING:
        # Element pointers first (the count is the client's claim), then the bytes themselves.
        budget.charge(what, shape, tf_dtype, extra_bytes=len(raw))
        return _decode_bytes(memoryview(raw), count, shape, what)
    dtype = wire_dtype(tf_dtype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise invalid_argument(
            f"{what}: unexpected size {len(raw)} bytes of {datatype} data for shape"
            f" {shape_text(shape)}, expecting {expected} bytes"
        )
    budget.charge(what, shape, tf_dtype)
    if tf_dtype == DT_BOOL:
        # Any non-zero byte is true; numpy's bool must hold exactly 0 or 1.
        return np.frombuffer(raw, dtype=np.uint8).astype(np.bool_).reshape(shape)
    array = np.frombuffer(raw, dtype=dtype)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array.reshape(shape)


def _decode_bytes(raw: memoryview, count: int, shape: Sequence[int], what: str) -> np.ndarray:
    elements: list[bytes] = []
    offset = 0
    end = len(raw)
    while offset < end:
        if len(elements) == count:
            raise invalid_argument(
                f"{what}: BYTES data holds more than the {count} elements of shape"
                f" {shape_text(shape)}"
            )
        if end - offset < BYTES_LENGTH_PREFIX:
            raise invalid_argument(
                f"{what}: BYTES data ends inside the length of element {len(elements)}"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += BYTES_LENGTH_PREFIX
        if length > end - offset:
            raise invalid_argument(
                f"{what}: BYTES element {len(elements)} says {length} bytes but only"
                f" {end - offset} remain"
            )
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise invalid_argument(
            f"{what}: BYTES data holds {len(elements)} elements, shape {shape_text(shape)}"
            f" needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array.reshape(shape)


def encode_raw(array: np.ndarray, tf_dtype: int) -> bytes:
    """One output tensor as V2 raw bytes (row-major, little-endian, BYTES length-prefixed)."""
    if tf_dtype == DT_STRING:
        parts = []
        for element in array.reshape(-1):
            data = element.encode() if isinstance(element, str) else bytes(element)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if tf_dtype == DT_BOOL:
        return np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(array, dtype=wire_dtype(tf_dtype)).tobytes()

