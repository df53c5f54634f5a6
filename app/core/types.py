"""Core value types shared by the gateway's modules; no I/O.

Past codec/tensor_json.py, tensors are plain `dict[str, np.ndarray]` keyed by signature alias:
numeric tensors as their numpy dtype, DT_STRING tensors as numpy object arrays of bytes.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Literal

import numpy as np

from workers import ipc

# TensorFlow DataType enum values (tensorflow/core/framework/types.proto).
DT_INVALID = 0
DT_FLOAT = 1
DT_DOUBLE = 2
DT_INT32 = 3
DT_UINT8 = 4
DT_INT16 = 5
DT_INT8 = 6
DT_STRING = 7
DT_COMPLEX64 = 8
DT_INT64 = 9
DT_BOOL = 10
DT_BFLOAT16 = 14
DT_UINT16 = 17
DT_COMPLEX128 = 18
DT_HALF = 19
DT_RESOURCE = 20
DT_VARIANT = 21
DT_UINT32 = 22
DT_UINT64 = 23

# dtypes whose values travel as raw little-endian numpy buffers: workers/ipc.py holds the
# one table (the workers read it too).
NUMPY_DTYPE_BY_TF = ipc.NUMPY_DTYPE_BY_TF
TF_DTYPE_BY_NUMPY = ipc.TF_DTYPE_BY_NUMPY

# TF's lower-case type names, as TF Serving prints them in error messages.
TF_DTYPE_NAMES: dict[int, str] = {
    DT_FLOAT: "float",
    DT_DOUBLE: "double",
    DT_INT32: "int32",
    DT_UINT8: "uint8",
    DT_INT16: "int16",
    DT_INT8: "int8",
    DT_STRING: "string",
    DT_COMPLEX64: "complex64",
    DT_INT64: "int64",
    DT_BOOL: "bool",
    DT_BFLOAT16: "bfloat16",
    DT_UINT16: "uint16",
    DT_COMPLEX128: "complex128",
    DT_HALF: "half",
    DT_RESOURCE: "resource",
    DT_VARIANT: "variant",
    DT_UINT32: "uint32",
    DT_UINT64: "uint64",
}


def tf_dtype_of(array: np.ndarray) -> int:
    """The TF DataType of a tensor in tfgate's in-memory form (object arrays are DT_STRING)."""
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return DT_STRING
    try:
        return TF_DTYPE_BY_NUMPY[array.dtype]
    except KeyError:
        return DT_INVALID


def row_count(inputs: dict[str, np.ndarray]) -> int | None:
    """Rows of a request (the shared dim 0 of every input); None when it cannot be split
    into rows: no inputs, a scalar input, or inputs that disagree on dim 0."""
    rows: int | None = None
    for array in inputs.values():
        if array.ndim == 0:
            return None
        if rows is None:
            rows = int(array.shape[0])
        elif array.shape[0] != rows:
            return None
    return rows


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class ServableId:
    """One loaded version of one model."""

    model: str
    version: int

    def __str__(self) -> str:
        return f"{{name: {self.model} version: {self.version}}}"


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a request asked for: a model, optionally a version or a label (never both)."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


class VersionState(enum.IntEnum):
    """ManagerState as GetModelStatus reports it (servable_state.h)."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass(frozen=True, slots=True)
class TensorSpec:
    """One entry of a SignatureDef's inputs or outputs map."""

    alias: str
    tensor_name: str
    dtype: int  # TF DataType enum
    shape: tuple[int, ...] | None  # None: unknown rank


@dataclasses.dataclass(frozen=True, slots=True)
class SignatureSpec:
    """What the gateway needs to know of one signature to validate and encode requests."""

    key: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    # Inputs the SignatureDef gives a default value for (TF2 exports): they may be omitted.
    inputs_with_defaults: frozenset[str] = frozenset()


DEFAULT_SIGNATURE = "serving_default"
# TF Serving's model versions, shapes and element counts are int64: the largest one.
INT64_MAX = (1 << 63) - 1

RequestFormat = Literal["row", "columnar"]

