"""JSON values -> numpy tensors of one dtype, with TF Serving's exact errors (FillTensorProto).

Data path: codec.decode_predict_inputs() -> per tensor, the vectorised helpers here or the exact
element walk here -> numpy arrays for the service. Also TF's dtype names for messages and the
base64 checks and the float32 cast codec/example.py shares. Pure functions; thread-safe.

The exact walk converts element by element in TF Serving's order, so every error is TF Serving's
first error, word for word. The vectorised helpers only ever answer "same result" or "cannot
tell" (None), never a different result.
"""

from __future__ import annotations

import binascii
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from app.codec.json_text import json_type_name, json_value_text
from app.core.errors import Code, ServingError, invalid_argument
from app.core.types import (
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT32,
    DT_UINT64,
    NUMPY_DTYPE_BY_TF,
    TF_DTYPE_NAMES,
    SignatureSpec,
)

MAX_TENSOR_RANK = 64  # numpy's limit
# Bytes a DT_STRING element takes beyond its own bytes: a pointer in the gateway's object array
# and an offset in the worker arena's string region (workers/ipc.py).
STRING_ELEMENT_BYTES = 8
_INT32_RANGE = (-(1 << 31), (1 << 31) - 1)
_INT64_RANGE = (-(1 << 63), (1 << 63) - 1)
# Which JSON integers each integer dtype accepts (IsInt/IsInt64/IsUint/IsUint64). INT8/INT16/UINT8
# take any int32 and, like TF's TensorProto int_val -> tensor copy, wrap modulo 2**bits.
INT_LIMITS = {
    DT_INT32: _INT32_RANGE,
    DT_INT16: _INT32_RANGE,
    DT_INT8: _INT32_RANGE,
    DT_UINT8: _INT32_RANGE,
    DT_INT64: _INT64_RANGE,
    DT_UINT32: (0, (1 << 32) - 1),
    DT_UINT64: (0, (1 << 64) - 1),
}
_EXTRA_DTYPE_NAMES = {
    0: "INVALID",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
}


class TensorBudget:
    """The bytes one request's decoded tensors may take, charged before each is allocated.

    DESIGN rule 8: a declared shape is a client's claim, so its element count and bytes are
    computed first (Python ints: no overflow) and checked here; only then is an array built.
    One budget per request; `limit_bytes` is --max_request_tensor_bytes capped by the worker
    arena. Event-loop or one thread: not shared.
    """

    __slots__ = ("limit_bytes", "used_bytes")

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0

    def charge(self, what: str, shape: Sequence[int], dtype: int, extra_bytes: int = 0) -> None:
        """Reserve shape's bytes (plus `extra_bytes`, e.g. string contents) or raise
        INVALID_ARGUMENT naming `what` (the caller's prefix, TF Serving's where one exists)."""
        nbytes = tensor_nbytes(shape, dtype) + extra_bytes
        if self.used_bytes + nbytes > self.limit_bytes:
            raise invalid_argument(
                f"{what}: shape {_shape_text(list(shape))} of {dtype_name(dtype)} needs"
                f" {nbytes} bytes; a request's tensors may take at most {self.limit_bytes} bytes"
            )
        self.used_bytes += nbytes


def tensor_nbytes(shape: Sequence[int], dtype: int) -> int:
    """Bytes of a tensor of `shape` and `dtype` in the gateway, exact for numeric dtypes, the
    per-element overhead for DT_STRING. Python ints: a shape like [2**62, 2**62] gives its true
    (huge) size instead of wrapping."""
    count = 1
    for size in shape:
        count *= size
    numpy_dtype = NUMPY_DTYPE_BY_TF.get(dtype)
    if numpy_dtype is None:  # DT_STRING, or a dtype decoding rejects later
        return count * STRING_ELEMENT_BYTES
    return count * numpy_dtype.itemsize


def unlimited_budget() -> TensorBudget:
    """For callers that bound nothing (unit tests, offline tools)."""
    return TensorBudget(1 << 80)


def request_budget(limit_bytes: int) -> TensorBudget:
    """A fresh budget for one request's decoded tensors; limit_bytes 0 bounds nothing (the
    transports pass settings.request_tensor_limit_bytes; unit tests pass 0)."""
    return TensorBudget(limit_bytes) if limit_bytes > 0 else unlimited_budget()


def dtype_name(dtype: int) -> str:
    """TF's DataTypeString(): the lower-case name TF Serving prints in messages."""
    return (
        TF_DTYPE_NAMES.get(dtype)
        or _EXTRA_DTYPE_NAMES.get(dtype)
        or f"unknown dtype enum ({dtype})"
    )


def is_b64_object(value: Any) -> bool:
    """IsValBase64Object(): exactly one key, "b64", holding a string."""
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def is_element_object(value: Any) -> bool:
    return type(value) is dict and not is_b64_object(value)


_B64_WHITESPACE = {ord(c): None for c in " \t\n\v\f\r"}


def b64_decode(text: str) -> bytes | None:
    """absl::Base64Unescape(): whitespace skipped, padding optional but exact; None if invalid."""
    data = text.translate(_B64_WHITESPACE)
    body = data.rstrip("=")
    padding = len(data) - len(body)
    if len(body) % 4 == 1 or padding > 2 or (padding and (len(body) + padding) % 4):
        return None
    try:
        return binascii.a2b_base64(body + "=" * (-len(body) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def decode_b64_object(value: Any) -> bytes:
    """JsonDecodeBase64Object()."""
    if not is_b64_object(value):
        raise invalid_argument(
            f"JSON Value: {json_value_text(value)} not formatted correctly for base64 data"
        )
    decoded = b64_decode(value["b64"])
    if decoded is None:
        raise invalid_argument("Unable to base64 decode")
    return decoded


def to_float32(values: Any) -> np.ndarray:
    """JSON numbers as DT_FLOAT the way GetFloat() casts them: via double, rounding silently,
    and beyond float's range to +-inf (not an error, and no numpy overflow warning)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The exact walk: FillTensorProto() element by element, TF Serving's errors
# ---------------------------------------------------------------------------------------------


def decode_rows_exact(instances: list, signature: SignatureSpec) -> dict[str, np.ndarray]:
    """Element by element, in TF Serving's order, so the first error is TF Serving's error."""
    names = sorted(signature.inputs)
    objects = is_element_object(instances[0])
    state = _RowState(signature)
    for index, element in enumerate(instances):
        if objects:
            if not is_element_object(element):
                raise invalid_argument(
                    f"Expecting object but got list at item {index} of input list"
                )
            for key, item in element.items():
                try:
                    state.add(key, item)
                except ServingError as exc:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {key} of 'instances' list."
                        f" Error: {_status_text(exc)}"
                    ) from None
            if element.keys() != set(names):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object:"
                    f" {json_value_text(element)} keys must be equal to: {','.join(names)}"
                )
        else:
            if is_element_object(element):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
            try:
                state.add(names[0], element)
            except ServingError as exc:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list."
                    f" Error: {_status_text(exc)}"
                ) from None
    return state.tensors(len(instances))


class _RowState:
    """AddInstanceItem()'s size/shape bookkeeping across the elements of "instances"."""

    def __init__(self, signature: SignatureSpec) -> None:
        self.signature = signature
        self.leaves: dict[str, list] = {}
        self.sizes: dict[str, int] = {}
        self.shapes: dict[str, list[int]] = {}

    def add(self, name: str, item: Any) -> None:
        spec = self.signature.inputs.get(name)
        if spec is None:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        leaves = self.leaves.setdefault(name, [])
        before = len(leaves)
        shape = fill_exact(item, spec.dtype, leaves)
        size = len(leaves) - before
        if name not in self.sizes:
            self.sizes[name], self.shapes[name] = size, shape
        elif self.sizes[name] != size:
            raise invalid_argument(f"Expecting tensor size: {self.sizes[name]} but got: {size}")
        elif self.shapes[name] != shape:
            raise invalid_argument(
                f"Expecting shape {_shape_text(self.shapes[name])} but got: {_shape_text(shape)}"
            )

    def tensors(self, batch: int) -> dict[str, np.ndarray]:
        return {
            name: leaves_to_array(self.leaves[name], [batch, *self.shapes[name]], spec.dtype)
            for name, spec in self.signature.inputs.items()
            if name in self.leaves
        }


def _status_text(exc: ServingError) -> str:
    return f"{exc.code.name}: {exc.message}"  # absl::Status::ToString()


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def dense_shape(value: Any) -> list[int]:
    """GetDenseTensorShape(): sizes along the first element at each level."""
    shape: list[int] = []
    node = value
    while type(node) is list:
        shape.append(len(node))
        if len(shape) > MAX_TENSOR_RANK:
            raise invalid_argument(
                f"JSON value nests lists more than {MAX_TENSOR_RANK} levels deep;"
                f" tensors of rank above {MAX_TENSOR_RANK} are not supported"
            )
        if not node:
            break
        node = node[0]
    return shape


def fill_exact(value: Any, dtype: int, leaves: list) -> list[int]:
    """FillTensorProto(): appends the converted leaves in order; returns the value's shape."""
    shape = dense_shape(value)
    rank = len(shape)

    def walk(node: Any, level: int) -> None:
        if type(node) is not list:
            if level != rank:
                raise invalid_argument(
                    f"JSON Value: {json_value_text(node)} found at incorrect level: {level + 1}"
                    f" in the JSON DOM. Expected at level: {rank}"
                )
            if type(node) is dict:
                if dtype != DT_STRING:
                    raise _type_error(node, dtype)
                leaves.append(decode_b64_object(node))
            else:
                leaves.append(_convert_leaf(node, dtype))
            return
        if level >= rank:
            raise invalid_argument(
                f"Encountered list at unexpected level: {level} expected < {rank}"
            )
        if len(node) != shape[level]:
            raise invalid_argument(
                f"Encountered list at unexpected size: {len(node)} at level: {level}"
                f" expected size: {shape[level]}"
            )
        for child in node:
            walk(child, level + 1)

    walk(value, 0)
    return shape


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(
        f"JSON Value: {json_value_text(value)} Type: {json_type_name(value)}"
        f" is not of expected type: {dtype_name(dtype)}"
    )


def _convert_leaf(value: Any, dtype: int) -> Any:
    """AddValueToTensor() for one JSON scalar."""
    kind = type(value)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if kind is not int and kind is not float:
            raise _type_error(value, dtype)
        return value  # any JSON number: precision loss is silent (leaves_to_array casts)
    if dtype in INT_LIMITS:
        low, high = INT_LIMITS[dtype]
        if kind is not int or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype == DT_STRING:
        if kind is not str:
            raise _type_error(value, dtype)
        return value.encode()
    if dtype == DT_BOOL:
        if kind is not bool:
            raise _type_error(value, dtype)
        return value
    raise ServingError(
        Code.UNIMPLEMENTED,
        f"Conversion of JSON Value: {json_value_text(value)} to type: {dtype_name(dtype)}",
    )


def leaves_to_array(leaves: list, shape: list[int], dtype: int) -> np.ndarray:
    if dtype == DT_STRING:
        array = np.array(leaves, dtype=object) if leaves else np.empty(0, dtype=object)
    elif dtype == DT_FLOAT:
        # TF reads the JSON number as a double, then GetFloat() casts it: same double rounding.
        array = to_float32(leaves)
    elif dtype == DT_DOUBLE:
        array = np.array(leaves, dtype=np.float64)
    elif dtype == DT_UINT64:
        array = np.array(leaves, dtype=np.uint64)
    elif dtype in INT_LIMITS:
        array = np.array(leaves, dtype=np.int64).astype(NUMPY_DTYPE_BY_TF[dtype])
    elif dtype == DT_BOOL:
        array = np.array(leaves, dtype=np.bool_)
    else:  # a dtype JSON cannot fill: only reachable when the value holds no leaves at all
        target = NUMPY_DTYPE_BY_TF.get(dtype)
        if target is None:
            raise ServingError(
                Code.UNIMPLEMENTED, f"tfgate cannot hold a {dtype_name(dtype)} tensor"
            )
        array = np.empty(0, dtype=target)
    return array.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Checks behind codec._tensor_fast(): when numpy's reading equals TF Serving's
# ---------------------------------------------------------------------------------------------


def hidden_bools(value: Any, array: np.ndarray, bools: Callable[[], bool]) -> bool:
    """numpy reads true/false among numbers as 1/0: look closer only at those values."""
    candidates = (array == 0) | (array == 1)
    if not candidates.any() or not bools():
        return False
    leaves = _flatten_regular(value, list(array.shape))
    return leaves is None or any(type(leaves[i]) is bool for i in np.flatnonzero(candidates))


def floats_fast(array: np.ndarray, dtype: int) -> np.ndarray:
    """Any JSON number fills DT_FLOAT / DT_DOUBLE (precision loss is silent)."""
    return to_float32(array) if dtype == DT_FLOAT else array.astype(np.float64)


def _flatten_regular(value: Any, shape: list[int]) -> list | None:
    """The leaves of a value whose lists all match `shape`, else None."""
    level = [value]
    for size in shape:
        for node in level:
            if type(node) is not list or len(node) != size:
                return None
        level = list(itertools.chain.from_iterable(level))
    return level


def strings_fast(value: Any) -> np.ndarray | None:
    try:
        shape = dense_shape(value)
    except ServingError:
        return None  # the exact walk reports it, wrapped as TF Serving would
    leaves = _flatten_regular(value, shape)
    if leaves is None:
        return None
    out = []
    for leaf in leaves:
        if type(leaf) is str:
            out.append(leaf.encode())
        elif is_b64_object(leaf) and (decoded := b64_decode(leaf["b64"])) is not None:
            out.append(decoded)
        else:
            return None
    array = np.array(out, dtype=object) if out else np.empty(0, dtype=object)
    return array.reshape(shape)
