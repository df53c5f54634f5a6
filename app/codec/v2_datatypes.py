"""Open Inference Protocol (V2) datatype names <-> TF DataTypes, and V2 tensor shapes.

Data path: codec/v2_json.py, codec/v2_binary.py and codec/v2_proto.py look datatypes up here
when they decode a V2 request into tfgate's numpy tensors and when they encode outputs. A
SavedModel signature's tensors map to V2 tensors by alias; their TF dtypes map by the table
below (DT_STRING is BYTES). Pure functions; thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.codec.tensor import MAX_TENSOR_RANK, dtype_name
from app.core.errors import Code, ServingError, invalid_argument
from app.core.types import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT16,
    DT_UINT32,
    DT_UINT64,
    NUMPY_DTYPE_BY_TF,
)

V2_DATATYPE_BY_TF: dict[int, str] = {
    DT_BOOL: "BOOL",
    DT_UINT8: "UINT8",
    DT_UINT16: "UINT16",
    DT_UINT32: "UINT32",
    DT_UINT64: "UINT64",
    DT_INT8: "INT8",
    DT_INT16: "INT16",
    DT_INT32: "INT32",
    DT_INT64: "INT64",
    DT_HALF: "FP16",
    DT_FLOAT: "FP32",
    DT_DOUBLE: "FP64",
    DT_STRING: "BYTES",
    DT_BFLOAT16: "BF16",
}
TF_DTYPE_BY_V2: dict[str, int] = {name: tf for tf, name in V2_DATATYPE_BY_TF.items()}
BYTES = "BYTES"
# Each BYTES element on the wire (binary data, raw contents) is prefixed by its length as a
# 4-byte little-endian unsigned integer.
BYTES_LENGTH_PREFIX = 4


def v2_datatype(tf_dtype: int, what: str) -> str:
    """The V2 datatype name of a signature tensor; a TF dtype the protocol cannot carry
    (complex, resource, variant, quantized) is a clear INVALID_ARGUMENT naming `what`."""
    name = V2_DATATYPE_BY_TF.get(tf_dtype)
    if name is None:
        raise invalid_argument(
            f"{what} has TF dtype {dtype_name(tf_dtype)}, which the V2 inference protocol"
            " has no datatype for"
        )
    return name


def tf_dtype_of_v2(datatype: str, what: str) -> int:
    tf_dtype = TF_DTYPE_BY_V2.get(datatype)
    if tf_dtype is None:
        raise invalid_argument(f"{what}: invalid datatype '{datatype}'")
    return tf_dtype


def wire_dtype(tf_dtype: int) -> np.dtype:
    """The little-endian numpy dtype of a numeric V2 datatype's raw bytes (BF16: ml_dtypes'
    bfloat16, two bytes per element). A datatype with no numpy dtype in workers/ipc.py's
    table is UNIMPLEMENTED, said plainly."""
    numpy_dtype = NUMPY_DTYPE_BY_TF.get(tf_dtype)
    if numpy_dtype is None:
        raise ServingError(
            Code.UNIMPLEMENTED,
            f"tfgate cannot carry {dtype_name(tf_dtype)} tensors (V2 datatype"
            f" {V2_DATATYPE_BY_TF.get(tf_dtype, '?')})",
        )
    return numpy_dtype.newbyteorder("<")


def is_float_datatype(tf_dtype: int) -> bool:
    """FP16/FP32/FP64/BF16: JSON numbers of any form fill them (bfloat16's numpy kind is 'V',
    not 'f', so the kind alone cannot say)."""
    return tf_dtype == DT_BFLOAT16 or NUMPY_DTYPE_BY_TF[tf_dtype].kind == "f"


def v2_shape(value: Any, what: str) -> tuple[int, ...]:
    """A request's `shape`: a list of non-negative integers, rank at most MAX_TENSOR_RANK."""
    if type(value) is not list:
        raise invalid_argument(f"{what}: 'shape' must be an array of integers")
    if len(value) > MAX_TENSOR_RANK:
        raise invalid_argument(
            f"{what}: shape has {len(value)} dimensions; at most {MAX_TENSOR_RANK} are supported"
        )
    for dim in value:
        if type(dim) is not int or dim < 0:
            raise invalid_argument(
                f"{what}: shape dimensions must be non-negative integers, got {value!r}"[:300]
            )
    return tuple(value)


def element_count(shape: Sequence[int]) -> int:
    """Elements of `shape` as a Python int (no overflow: callers charge the budget first)."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def metadata_shape(shape: tuple[int, ...] | None) -> list[int]:
    """A signature's declared shape as V2 metadata gives it: -1 for a dimension of any size;
    an unknown rank as [-1] (the protocol has no way to say "any rank")."""
    if shape is None:
        return [-1]
    return [d if d >= 0 else -1 for d in shape]
