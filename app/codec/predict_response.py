r"""TF Serving's REST predict API, response side: numpy tensors -> response bytes.

Data path: service -> encode_predict_response() / encode_error() -> rest/api.py (and the
REST edge's own errors). Mirrors tensorflow_serving/util/json_tensor.cc MakeJsonFromTensors;
numbers and strings are written by codec/json_text.py. Pure functions; thread-safe.

Writing. Every body is rapidjson PrettyWriter output: 4-space indent, '": "' after keys, and
one element per line except where json_tensor.cc turns on kFormatSingleLineArray (each row of
"predictions", each classification, the regression list). Exact bytes (evidence: json_tensor.cc
SetFormatOptions() calls + rapidjson prettywriter.h PrettyPrefix()/EndArray(); TF Serving's
well-known reply for half_plus_two):
  row:                {\n    "predictions": [3.0, 3.5, 4.0\n    ]\n}
  row, 2-D:           {\n    "predictions": [[2.5, 3.0], [3.5, 4.0]\n    ]\n}
  row, two outputs:   {\n    "predictions": [\n        {\n            "a": [1, 2],\n
                      ..          "b": 0.5\n        },\n        {\n ... }\n    ]\n}
  row, zero batch:    {\n    "predictions": []\n}
  columnar:           {\n    "outputs": [\n        [\n            2.5,\n            3.0\n
                      ..  ],\n ...\n    ]\n}          scalar: {\n    "outputs": 3.0\n}
  columnar, several:  {\n    "outputs": {\n        "a": [\n            1\n        ],\n ...
  b64 (alias *_bytes, DT_STRING only): an object, which always breaks lines, even in a row:
                      {\n    "predictions": [{\n            "b64": "aGk="\n        }\n    ]\n}
  error:              {\n    "error": "<message>"\n}
"""

from __future__ import annotations

import binascii
import itertools
import math
import operator

import numpy as np

from app.codec.json_text import (
    decimal_text_f64,
    float32_leaf_texts,
    float32_matrix,
    integer_matrix,
    json_quote_bytes,
)
from app.codec.tensor import dtype_name
from app.core.errors import invalid_argument
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
    RequestFormat,
    tf_dtype_of,
)

_WRITABLE = frozenset(
    (DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT16, DT_INT8, DT_UINT8, DT_STRING, DT_INT64, DT_BOOL,
     DT_UINT32, DT_UINT64)
)  # fmt: skip
# Below these many elements per-element Python formatting is cheaper than the vectorised
# writers, whose dozens of numpy calls cost ~100-170 us however small the tensor (measured on
# the whole response, (n, 1) tensors, this machine).
_VECTOR_MIN = 64  # glue ids, bools
_FLOAT32_MATRIX_MIN = 96
_INTEGER_MATRIX_MIN = 128
_BOOL_TEXT = np.array([b"false", b"true"]).view(np.uint8).reshape(2, 5)


def encode_predict_response(outputs: dict[str, np.ndarray], fmt: RequestFormat) -> bytes:
    """The response body for a predict request made in `fmt`; outputs are written in dict order."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    tensors = {name: np.asarray(tensor) for name, tensor in outputs.items()}
    if fmt == "row":
        return _encode_rows(tensors)
    _check_writable(tensors)
    if len(tensors) == 1:
        ((name, tensor),) = tensors.items()
        return b'{\n    "outputs": ' + _render(tensor, True, 1, _is_bytes(name, tensor)) + b"\n}"
    members = [
        b"\n        " + json_quote_bytes(name) + b": " + _render(t, True, 2, _is_bytes(name, t))
        for name, t in tensors.items()
    ]
    return b'{\n    "outputs": {' + b",".join(members) + b"\n    }\n}"


def encode_error(message: str) -> bytes:
    """TF Serving's REST error body (MakeJsonFromStatus)."""
    return b'{\n    "error": ' + json_quote_bytes(message) + b"\n}"


def _encode_rows(tensors: dict[str, np.ndarray]) -> bytes:
    batch = -1
    for name, tensor in tensors.items():
        if tensor.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and tensor.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {tensor.shape[0]}"
                f" expecting: {batch}"
            )
        batch = tensor.shape[0]
    _check_writable(tensors)
    if batch == 0:
        return b'{\n    "predictions": []\n}'
    if len(tensors) == 1:
        ((name, tensor),) = tensors.items()
        text = _render(tensor, False, 1, _is_bytes(name, tensor))
        return b'{\n    "predictions": ' + text[:-1] + b"\n    ]\n}"
    rows = [_render_rows(t, 3, _is_bytes(name, t)) for name, t in tensors.items()]
    keys = [b"\n            " + json_quote_bytes(name) + b": " for name in tensors]
    items = [
        b"\n        {"
        + b",".join(key + row[i] for key, row in zip(keys, rows, strict=True))
        + b"\n        }"
        for i in range(batch)
    ]
    return b'{\n    "predictions": [' + b",".join(items) + b"\n    ]\n}"


def _is_bytes(name: str, tensor: np.ndarray) -> bool:
    return tf_dtype_of(tensor) == DT_STRING and name.endswith("_bytes")


def _check_writable(tensors: dict[str, np.ndarray]) -> None:
    for tensor in tensors.values():
        dtype = tf_dtype_of(tensor)
        if dtype not in _WRITABLE and tensor.size:
            raise invalid_argument(
                f"Failed to write JSON value for tensor type: {dtype_name(dtype)}"
            )


def _indent(level: int) -> bytes:
    return b" " * (4 * level)


def _render(tensor: np.ndarray, pretty: bool, level: int, b64: bool) -> bytes:
    """A tensor as a JSON value written inside a container at writer depth `level`.

    pretty: PrettyWriter's default mode (one element per line); else kFormatSingleLineArray.
    """
    rank = tensor.ndim
    if rank == 0:
        return _leaf_texts(tensor.reshape(1), b64, level)[0]
    if tensor.size == 0:
        return _render_empty(tensor.shape, pretty, level)
    if pretty:
        start = b"[" + b"".join(b"\n" + _indent(level + j) + b"[" for j in range(1, rank))
        start += b"\n" + _indent(level + rank)
        glue = [_pretty_glue(closed, rank, level) for closed in range(rank)]
        end = b"".join(b"\n" + _indent(level + j) + b"]" for j in range(rank - 1, -1, -1))
    else:
        start, end = b"[" * rank, b"]" * rank
        glue = [b"]" * closed + b", " + b"[" * closed for closed in range(rank)]
    leaves = _leaf_texts(tensor.reshape(-1), b64, level + rank)
    return start + _join(leaves, _glue_ids(tensor.shape), glue) + end


def _pretty_glue(closed: int, rank: int, level: int) -> bytes:
    """What goes between two leaves when `closed` inner lists end between them."""
    closes = b"".join(
        b"\n" + _indent(level + j) + b"]" for j in range(rank - 1, rank - 1 - closed, -1)
    )
    opens = b"".join(b"\n" + _indent(level + j) + b"[" for j in range(rank - closed, rank))
    return closes + b"," + opens + b"\n" + _indent(level + rank)


def _render_rows(tensor: np.ndarray, level: int, b64: bool) -> list[bytes]:
    """Single-line text of tensor[i] for each i, each written inside a container at `level`."""
    batch, inner = tensor.shape[0], tensor.ndim - 1
    if tensor.size == 0:
        return [_render_empty(tensor.shape[1:], False, level)] * batch
    # Render all rows at once with a \x01 between rows (JSON text never holds a raw \x01).
    glue = [b"]" * closed + b", " + b"[" * closed for closed in range(inner)]
    glue.append(b"]" * inner + b"\x01" + b"[" * inner)
    leaves = _leaf_texts(tensor.reshape(-1), b64, level + inner)
    text = b"[" * inner + _join(leaves, _glue_ids(tensor.shape), glue) + b"]" * inner
    return text.split(b"\x01")


def _render_empty(shape: tuple[int, ...], pretty: bool, level: int) -> bytes:
    """A zero-element tensor: nested lists down to the first zero dimension."""
    if shape[0] == 0:
        return b"[]"
    inner = _render_empty(shape[1:], pretty, level + 1)
    if pretty:
        element = b"\n" + _indent(level + 1) + inner
        return b"[" + b",".join([element] * shape[0]) + b"\n" + _indent(level) + b"]"
    return b"[" + b", ".join([inner] * shape[0]) + b"]"


def _glue_ids(shape: tuple[int, ...]) -> np.ndarray | list[int]:
    """For each pair of adjacent leaves, how many inner lists close between them."""
    count = math.prod(shape)
    strides = list(itertools.accumulate(reversed(shape[1:]), operator.mul))
    if count <= _VECTOR_MIN:  # numpy's per-call cost dominates small tensors
        ids = [0] * (count - 1)
        for stride in strides:
            for pair in range(stride - 1, count - 1, stride):  # leaf pair+1 starts a new list
                ids[pair] += 1
        return ids
    after = np.arange(1, count)
    ids = np.zeros(count - 1, dtype=np.intp)
    for stride in strides:
        ids += after % stride == 0
    return ids


def _join(
    leaves: list[bytes] | np.ndarray, glue_ids: np.ndarray | list[int], glue: list[bytes]
) -> bytes:
    if isinstance(leaves, list):
        parts = [b""] * (2 * len(leaves) - 1)
        parts[::2] = leaves
        ids = glue_ids.tolist() if isinstance(glue_ids, np.ndarray) else glue_ids
        parts[1::2] = [glue[i] for i in ids]
        return b"".join(parts)
    # A NUL-padded character matrix: append each leaf's glue as more columns, drop the NULs.
    table = np.array([*glue, b""])
    table = table.view(np.uint8).reshape(len(table), -1)
    ids = np.append(glue_ids, len(glue))
    matrix = np.concatenate((leaves, np.take(table, ids, axis=0)), axis=1)
    return matrix.tobytes().translate(None, b"\x00")


def _leaf_texts(flat: np.ndarray, b64: bool, level: int) -> list[bytes] | np.ndarray:
    """JSON text of each element: a list of bytes, or a NUL-padded uint8 matrix when large."""
    dtype = tf_dtype_of(flat)
    large = flat.size >= _VECTOR_MIN
    if dtype == DT_FLOAT:
        if flat.size >= _FLOAT32_MATRIX_MIN:
            return float32_matrix(flat)
        return float32_leaf_texts(flat.tolist())
    if dtype == DT_DOUBLE:
        return [decimal_text_f64(v).encode() for v in flat.tolist()]
    if dtype == DT_BOOL:
        if large:
            return _BOOL_TEXT[flat.astype(np.intp)]
        return [b"true" if v else b"false" for v in flat.tolist()]
    if dtype == DT_STRING:
        if not b64:
            return [json_quote_bytes(v) for v in flat.tolist()]
        head = b"{\n" + _indent(level + 1) + b'"b64": "'
        tail = b'"\n' + _indent(level) + b"}"
        return [
            head + binascii.b2a_base64(_as_bytes(v), newline=False) + tail for v in flat.tolist()
        ]
    if flat.size >= _INTEGER_MATRIX_MIN:
        return integer_matrix(flat)
    return [str(v).encode() for v in flat.tolist()]


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "replace") if isinstance(value, str) else bytes(value)


def float32_texts(values: np.ndarray) -> list[bytes]:
    """decimal_text_f32() of each element of a float32 array (vectorised when large)."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if flat.size < _FLOAT32_MATRIX_MIN:
        return float32_leaf_texts(flat.tolist())
    glue = np.zeros(flat.size - 1, dtype=np.intp)
    return _join(float32_matrix(flat), glue, [b"\x01"]).split(b"\x01")
