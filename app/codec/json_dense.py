"""Dense float tensors straight from a predict body's JSON text into numpy, without Python lists.

Data path: codec.parse_predict_json() -> read_dense_body() here, for bodies whose structure
worth_dense() says pays for it -> codec.decode_predict_inputs() takes the arrays when every input
it needs is DT_FLOAT or DT_DOUBLE; every other body and signature goes through orjson and
codec/tensor.py.

Why it exists: for an image-shaped tensor (28x28x1 is 784 one-element lists), orjson plus np.array
spends ~240 us per request building and then walking Python lists, which made the gateway the
bottleneck of a CNN at one row per request. simdjson (pysimdjson) parses the body into its tape in
C and copies a numeric array, flattened, into a float64 buffer, in ~50 us.

Same answer or no answer: read_dense_body() returns None, and the caller uses the orjson path,
whenever TF Serving could treat the body differently from "these numbers in this regular shape":
a body simdjson refuses (NaN/Infinity, bytes after the root, deep nesting, numbers beyond int64/
uint64/double), escapes in strings, repeated or unknown top-level keys, both "instances" and
"inputs", a non-string signature_name, a tensor that is not an array of numbers, an empty or ragged
tensor, rank over 64. dense_float_tensor() then only fills DT_FLOAT / DT_DOUBLE inputs, which
take any JSON number (integers too) and round silently. simdjson and orjson both round decimal
text to the nearest double, and both keep "-0" as 0 and "-0.0" as -0.0, so the values are the
same bits.

Which path, by structure, not byte length: orjson's cost grows with the Python objects it builds,
one float per number and one list per "[" (np.array then walks them all), while simdjson's grows
with the bytes. So the count of numbers and lists decides, not how long the numbers are printed:
a 28x28x1 image is 784 numbers and 814 lists whether a client prints it in 4.4 KB of ints or
17 KB of repr floats, and simdjson reads it 3.5-5x faster either way. Measured over a matrix of
shapes and number formats (bench/decode_crossover.py, table in bench/analysis.md): orjson wins
below ~100 numbers in one flat list, simdjson from ~250 numbers or any nested image. worth_dense()
weighs separators and lists in the body's first DENSE_SCAN_BYTES (two C-speed byte counts, a few
microseconds at most): commas + LIST_WEIGHT * "[" >= DENSE_MIN_WEIGHT.

The parser is reused per thread (it keeps its buffers) for bodies up to _REUSE_MAX_BYTES; larger
bodies get a parser of their own so one 100 MB request does not pin 100s of MB for good.
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import simdjson

from app.codec.tensor import MAX_TENSOR_RANK, to_float32
from app.core.types import DT_DOUBLE, DT_FLOAT, RequestFormat

# worth_dense(): commas + LIST_WEIGHT * "[" in the first DENSE_SCAN_BYTES must reach
# DENSE_MIN_WEIGHT (measured crossover, bench/analysis.md "Decode path by structure").
DENSE_MIN_WEIGHT = 128
LIST_WEIGHT = 4  # a nested list costs orjson + np.array about 4 numbers' worth
DENSE_SCAN_BYTES = 4096  # enough to see DENSE_MIN_WEIGHT even in 19-digit repr floats
_REUSE_MAX_BYTES = 4 * 1024 * 1024
_TOP_KEYS = frozenset(("instances", "inputs", "signature_name"))
_NUMBER_AND_SPACE = b"0123456789.eE+- \t\n\r"
# _regular_tensors(): the tensors' lists are checked by walking them when the body has at least
# this many bytes per list, else by scanning the text. Measured on this machine: the walk costs
# ~0.3 us per list (a proxy and a len() each) plus ~0.3 ns per byte to count the "[", the text
# scan ~0.8 ns per byte, so the walk pays from ~600 bytes per list. A 64x256 float batch
# (150 KB, 65 lists): 65 against 115 us; a 28x28x1 image (8.7 KB, 814 lists) keeps the scan.
TREE_CHECK_BYTES_PER_LIST = 600

_local = threading.local()


@dataclasses.dataclass(frozen=True, slots=True)
class DenseBody:
    """A predict body whose tensors are all regular arrays of numbers.

    tensors maps each input alias to its flat float64 values and shape; the key is None for the
    one unnamed tensor of {"instances": [...]} or {"inputs": [...]}.
    """

    signature_name: str
    format: RequestFormat
    tensors: dict[str | None, tuple[np.ndarray, tuple[int, ...]]]


def worth_dense(body: bytes) -> bool:
    """Whether the body holds enough numbers and lists for simdjson to beat orjson + np.array
    (a guess from its first DENSE_SCAN_BYTES; read_dense_body() still checks everything)."""
    commas = body.count(b",", 0, DENSE_SCAN_BYTES)
    if commas >= DENSE_MIN_WEIGHT:
        return True
    return commas + LIST_WEIGHT * body.count(b"[", 0, DENSE_SCAN_BYTES) >= DENSE_MIN_WEIGHT


def read_dense_body(body: bytes) -> DenseBody | None:
    """The body's tensors as float64 arrays, or None when the orjson path must decide."""
    if b"\\" in body:
        return None  # escapes: leave every string question to the reader TF Serving mirrors
    parser = _parser_for(len(body))
    try:
        doc = parser.parse(body)
    except (ValueError, TypeError, RuntimeError):
        return None
    # Only numpy arrays leave: pysimdjson refuses to reuse a parser while its proxies are alive.
    return _read_document(doc, body)


def dense_float_tensor(flat: np.ndarray, shape: tuple[int, ...], dtype: int) -> np.ndarray | None:
    """The tensor in `dtype` (DT_FLOAT or DT_DOUBLE), or None for any other dtype. Every JSON
    number fills a float tensor, rounding silently (beyond float's range: +-inf)."""
    if dtype == DT_FLOAT:
        return to_float32(flat).reshape(shape)
    if dtype == DT_DOUBLE:
        return flat.reshape(shape)
    return None


def _parser_for(size_bytes: int) -> simdjson.Parser:
    if size_bytes > _REUSE_MAX_BYTES:
        return simdjson.Parser()
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def _read_document(doc: object, body: bytes) -> DenseBody | None:
    if not isinstance(doc, simdjson.Object):
        return None
    keys = list(doc.keys())
    if len(keys) != len(set(keys)) or not _TOP_KEYS.issuperset(keys):
        return None
    # Not doc.get(): pysimdjson finds a missing key by catching a C++ exception. For a request
    # that names no signature that was 2.9 us of the gateway's samples in libgcc_s's unwinder
    # (perf), 3.7 us per parse in a micro-benchmark (bench/analysis.md).
    signature_name = doc["signature_name"] if "signature_name" in keys else ""
    if type(signature_name) is not str or _has_bracket(signature_name):
        return None
    if "instances" in keys:
        if "inputs" in keys:
            return None
        fmt: RequestFormat = "row"
        value = doc["instances"]
    elif "inputs" in keys:
        fmt = "columnar"
        value = doc["inputs"]
    else:
        return None
    arrays = _named_arrays(value)
    if arrays is None:
        return None
    tensors = {}
    for name, array in arrays:
        tensor = _flat_numbers(array)
        if tensor is None:
            return None
        tensors[name] = tensor
    if not _regular_tensors(body, [array for _, array in arrays], [s for _, s in tensors.values()]):
        return None
    return DenseBody(signature_name, fmt, tensors)


def _named_arrays(value: object) -> list[tuple[str | None, simdjson.Array]] | None:
    """The tensors in document order: one unnamed array, or each member of an "inputs" object."""
    if isinstance(value, simdjson.Array):
        return [(None, value)]
    if not isinstance(value, simdjson.Object):
        return None
    names = list(value.keys())  # document order; items() would copy values into Python lists
    if not names or len(names) != len(set(names)) or any(map(_has_bracket, names)):
        return None
    members = [(name, value[name]) for name in names]
    if not all(isinstance(array, simdjson.Array) for _, array in members):
        return None
    return members


def _flat_numbers(array: simdjson.Array) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """The array's numbers flattened in C, and the shape its first elements spell out."""
    try:
        buffer = array.as_buffer(of_type="d")  # TypeError if any leaf is not a number
    except (TypeError, ValueError):
        return None
    shape = []
    node: object = array
    while isinstance(node, simdjson.Array):
        size = len(node)
        shape.append(size)
        if size == 0 or len(shape) > MAX_TENSOR_RANK:
            return None  # empty tensors and numpy's rank limit: the orjson path's business
        node = node[0]
    flat = np.frombuffer(buffer, dtype=np.float64)
    if flat.size != math.prod(shape):
        return None
    return flat, tuple(shape)


def _regular_tensors(
    body: bytes, arrays: list[simdjson.Array], shapes: list[tuple[int, ...]]
) -> bool:
    """Whether the tensors are exactly their shapes (as_buffer() flattens ragged arrays too):
    by their lists' lengths when they have few lists for the body's bytes, else by the text."""
    lists = sum(_list_count(shape) for shape in shapes)
    if lists * TREE_CHECK_BYTES_PER_LIST > len(body):
        return _regular(body, shapes)
    # Every list above the numbers has its shape's length, and the body has no other list:
    # each "[" opens a list (strings with brackets were declined, escapes too), and the walk
    # accounts for `lists` distinct ones, so one more "[" is a list where a number should be.
    return body.count(b"[") == lists and all(
        _lengths_match(array, shape) for array, shape in zip(arrays, shapes, strict=True)
    )


def _list_count(shape: tuple[int, ...]) -> int:
    """Lists in a regular tensor of `shape`: 1 + s0 + s0*s1 + ... (all but the numbers)."""
    count, lists_at_depth = 0, 1
    for size in shape:
        count += lists_at_depth
        lists_at_depth *= size
    return count


def _lengths_match(node: simdjson.Array, shape: tuple[int, ...]) -> bool:
    if len(node) != shape[0]:
        return False
    if len(shape) == 1:
        return True
    inner = shape[1:]
    return all(isinstance(child, simdjson.Array) and _lengths_match(child, inner) for child in node)


def _regular(body: bytes, shapes: list[tuple[int, ...]]) -> bool:
    """Whether the tensors' brackets and commas are exactly those of their shapes, in order.

    as_buffer() flattens ragged arrays too ([[1, 2], [3, 4, 5], [6]] has the size of a 3x2), so
    the text decides. With numbers and whitespace deleted, what is left of a tensor is its
    skeleton ("[[,],[,]]" for 2x2); the only other brackets a body can hold are inside strings,
    and _read_document() declined strings with brackets, so the n-th "[" opening a tensor is
    where its skeleton starts. A skeleton is balanced, so matching it as a prefix matches it all.
    """
    skeleton = body.translate(None, _NUMBER_AND_SPACE)
    position = 0
    for shape in shapes:
        expected = _skeleton(shape)
        position = skeleton.find(b"[", position)
        if position < 0 or not skeleton.startswith(expected, position):
            return False
        position += len(expected)
    return True


def _skeleton(shape: tuple[int, ...]) -> bytes:
    text = b"[" + b"," * (shape[-1] - 1) + b"]"
    for size in reversed(shape[:-1]):
        text = b"[" + b",".join([text] * size) + b"]"
    return text


def _has_bracket(text: str) -> bool:
    return "[" in text or "]" in text
