"""V2 REST bodies <-> numpy: the Open Inference Protocol's JSON tensors and Triton's binary
tensor data extension (a JSON header of `Inference-Header-Content-Length` bytes, then each
binary input's bytes in input order).

Data path: rest/v2_routes.py reads the body -> parse_infer_request() (JSON + binary parts,
sizes bounded) -> serving/service.py calls decode_inputs() with the resolved signature ->
numpy inputs; the answer is codec/v2_response.py's. Pure functions; thread-safe.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import simdjson

from app.codec.json_dense import DENSE_SCAN_BYTES, worth_dense
from app.codec.tensor import MAX_TENSOR_RANK, TensorBudget, to_float32
from app.codec.v2_binary import decode_raw
from app.codec.v2_datatypes import (
    element_count,
    is_float_datatype,
    shape_text,
    tf_dtype_of_v2,
    v2_datatype,
    v2_shape,
    wire_dtype,
)
from app.core.errors import invalid_argument
from app.core.types import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_FLOAT,
    DT_STRING,
    INT64_MAX,
    NUMPY_DTYPE_BY_TF,
    ModelSpec,
    SignatureSpec,
    TensorSpec,
)

BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
# tfgate's extension: which SignatureDef runs (default serving_default), a request parameter.
SIGNATURE_NAME = "signature_name"
EXTENSIONS = ("binary_tensor_data",)
_FLOAT_DATATYPES = frozenset(("FP16", "FP32", "FP64", "BF16"))


@dataclasses.dataclass(frozen=True, slots=True)
class DenseData:
    """A float input's JSON `data`, read by simdjson straight into flat float64 values."""

    values: np.ndarray


@dataclasses.dataclass(slots=True)
class V2Input:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None  # the JSON "data" value, when the tensor travels as JSON
    raw: memoryview | None = None  # its binary_data part, when it travels as binary


@dataclasses.dataclass(slots=True)
class V2RequestedOutput:
    name: str
    binary_data: bool | None  # None: the request's binary_data_output decides


@dataclasses.dataclass(slots=True)
class V2InferRequest:
    id: str | None
    inputs: list[V2Input]
    outputs: list[V2RequestedOutput]
    binary_data_output: bool
    signature_name: str


def _load_dense(header: memoryview) -> dict[str, Any] | None:
    """The request document with each FP16/FP32/FP64/BF16 input's `data` as DenseData: simdjson
    copies the numbers into a float64 buffer in C, without the Python list of floats orjson
    builds (the large-tensor cost of V2 JSON, as for TF Serving's JSON in codec/json_dense.py).
    None when orjson must decide: a body simdjson refuses, or repeated keys."""
    try:
        # A parser per call: its proxies must not outlive it, and only plain values leave.
        document = simdjson.Parser().parse(bytes(header))
    except (ValueError, TypeError, RuntimeError):
        return None
    if not isinstance(document, simdjson.Object):
        return None
    keys = list(document.keys())
    if len(keys) != len(set(keys)):
        return None
    loaded: dict[str, Any] = {}
    for key in keys:
        value = document[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            inputs = [_dense_input(item) for item in value]
            if any(item is None for item in inputs):
                return None
            loaded[key] = inputs
        else:
            loaded[key] = _plain(value)
    return loaded


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _dense_input(item: Any) -> Any:
    if not isinstance(item, simdjson.Object):
        return _plain(item)
    keys = list(item.keys())
    if len(keys) != len(set(keys)):
        return None
    entry = {key: _plain(item[key]) for key in keys if key != "data"}
    if "data" in keys:
        data = item["data"]
        dense = None
        if entry.get("datatype") in _FLOAT_DATATYPES and isinstance(data, simdjson.Array):
            dense = _dense_floats(data)
        entry["data"] = dense if dense is not None else _plain(data)
    return entry


def _dense_floats(array: simdjson.Array) -> DenseData | None:
    """Every leaf as float64, flattened; None when a leaf is not a number (the list then goes
    the usual way and gets the usual error)."""
    try:
        buffer = array.as_buffer(of_type="d")
    except (TypeError, ValueError):
        return None
    return DenseData(np.frombuffer(buffer, dtype=np.float64))


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise invalid_argument(f"{what} must be a JSON object")
    return value


def _bool_parameter(parameters: dict[str, Any], key: str, what: str) -> bool | None:
    value = parameters.get(key)
    if value is None:
        return None
    if type(value) is not bool:
        raise invalid_argument(f"{what}: parameter '{key}' must be a boolean")
    return value


def parse_infer_request(body: bytes, header_length: int | None) -> V2InferRequest:
    """A V2 infer body -> its inputs (JSON data or binary parts), requested outputs and
    parameters. `header_length`: the Inference-Header-Content-Length header, when sent."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    else:
        if header_length < 0 or header_length > len(body):
            raise invalid_argument(
                f"Inference-Header-Content-Length {header_length} is outside the"
                f" {len(body)}-byte request body"
            )
        header, binary = view[:header_length], view[header_length:]
    try:
        # By structure, as TF Serving's JSON (json_dense.worth_dense()): V2's flat `data`
        # crosses over at ~128 numbers in any number format (bench/analysis.md, "V2 JSON").
        scan = bytes(header[:DENSE_SCAN_BYTES])
        document = _load_dense(header) if worth_dense(scan) else None
        if document is None:
            document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"failed to parse the request JSON buffer: {exc}") from None
    if type(document) is not dict:
        raise invalid_argument("the request body must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and type(request_id) is not str:
        raise invalid_argument("'id' must be a string")
    parameters = _object(document.get("parameters"), "'parameters'")
    signature_name = parameters.get(SIGNATURE_NAME, "")
    if type(signature_name) is not str:
        raise invalid_argument(f"parameter '{SIGNATURE_NAME}' must be a string")
    raw_inputs = document.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise invalid_argument("the request must have a non-empty 'inputs' array")
    inputs = []
    offset = 0
    for index, item in enumerate(raw_inputs):
        tensor, size = _parse_input(item, index, binary, offset)
        offset += size
        inputs.append(tensor)
    if offset != len(binary):
        raise invalid_argument(
            f"the request's binary data is {len(binary)} bytes but its inputs'"
            f" {BINARY_DATA_SIZE} add up to {offset}"
        )
    return V2InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_parse_outputs(document.get("outputs")),
        binary_data_output=bool(
            _bool_parameter(parameters, BINARY_DATA_OUTPUT, "'parameters'")
        ),
        signature_name=signature_name,
    )


def _parse_input(item: Any, index: int, binary: memoryview, offset: int) -> tuple[V2Input, int]:
    """One entry of "inputs", and how many bytes of the binary part it takes."""
    if type(item) is not dict:
        raise invalid_argument(f"inputs[{index}] must be a JSON object")
    name = item.get("name")
    if type(name) is not str:
        raise invalid_argument(f"inputs[{index}] must have a string 'name'")
    what = f"input '{name}'"
    datatype = item.get("datatype")
    if type(datatype) is not str:
        raise invalid_argument(f"{what} must have a string 'datatype'")
    shape = v2_shape(item.get("shape"), what)
    parameters = _object(item.get("parameters"), f"{what} 'parameters'")
    size = parameters.get(BINARY_DATA_SIZE)
    if size is None:
        if "data" not in item:
            raise invalid_argument(f"{what} has neither 'data' nor '{BINARY_DATA_SIZE}'")
        return V2Input(name, datatype, shape, data=item["data"]), 0
    if type(size) is not int or size < 0:
        raise invalid_argument(f"{what}: '{BINARY_DATA_SIZE}' must be a non-negative integer")
    if "data" in item:
        raise invalid_argument(f"{what} has both 'data' and '{BINARY_DATA_SIZE}'")
    if offset + size > len(binary):
        raise invalid_argument(
            f"{what}: '{BINARY_DATA_SIZE}' {size} runs past the end of the request's"
            f" {len(binary)} bytes of binary data"
        )
    return V2Input(name, datatype, shape, raw=binary[offset : offset + size]), size


def _parse_outputs(value: Any) -> list[V2RequestedOutput]:
    if value is None:
        return []
    if type(value) is not list:
        raise invalid_argument("'outputs' must be an array")
    outputs = []
    for index, item in enumerate(value):
        if type(item) is not dict or type(item.get("name")) is not str:
            raise invalid_argument(f"outputs[{index}] must be an object with a string 'name'")
        what = f"output '{item['name']}'"
        parameters = _object(item.get("parameters"), f"{what} 'parameters'")
        outputs.append(
            V2RequestedOutput(item["name"], _bool_parameter(parameters, BINARY_DATA, what))
        )
    return outputs


# --- inputs against the signature ---


def signature_input(
    signature: SignatureSpec, name: str, datatype: str, model: str
) -> tuple[TensorSpec, int]:
    """The signature's input of alias `name` and its TF dtype, checked against the request's
    datatype (the same checks for REST and gRPC)."""
    spec = signature.inputs.get(name)
    if spec is None:
        raise invalid_argument(f"unexpected inference input '{name}' for model '{model}'")
    what = f"input '{name}'"
    tf_dtype = tf_dtype_of_v2(datatype, what)
    if tf_dtype != spec.dtype:
        raise invalid_argument(
            f"unexpected datatype {datatype} for inference input '{name}', expecting"
            f" {v2_datatype(spec.dtype, what)}"
        )
    return spec, tf_dtype


def decode_inputs(
    request: V2InferRequest, signature: SignatureSpec, model: str, budget: TensorBudget
) -> dict[str, np.ndarray]:
    """The request's tensors by signature alias; every size bounded before allocation."""
    tensors: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise invalid_argument(f"input '{tensor.name}' is given more than once")
        _, tf_dtype = signature_input(signature, tensor.name, tensor.datatype, model)
        what = f"input '{tensor.name}'"
        if tensor.raw is not None:
            tensors[tensor.name] = decode_raw(
                tensor.raw, tensor.datatype, tf_dtype, tensor.shape, what, budget
            )
        else:
            tensors[tensor.name] = decode_json_data(
                tensor.data, tensor.datatype, tf_dtype, tensor.shape, what, budget
            )
    return tensors


def _flatten(data: Any, what: str) -> list:
    """Row-major leaves of `data`: a flat array, or nested arrays (the protocol allows both)."""
    if type(data) is not list:
        return [data]
    if not data or type(data[0]) is not list:
        # Flat (the common case): a list hidden further on makes numpy's read fail, and a
        # BYTES element that is not a string fails the caller's check; no walk needed.
        return data
    level = data
    for _ in range(MAX_TENSOR_RANK + 1):
        if not any(type(node) is list for node in level):
            return level
        if not all(type(node) is list for node in level):
            raise invalid_argument(f"{what}: 'data' mixes arrays and values at one level")
        level = list(itertools.chain.from_iterable(level))
    raise invalid_argument(f"{what}: 'data' nests deeper than {MAX_TENSOR_RANK} levels")


def decode_json_data(
    data: Any,
    datatype: str,
    tf_dtype: int,
    shape: Sequence[int],
    what: str,
    budget: TensorBudget,
) -> np.ndarray:
    """JSON `data` of a V2 input as a tensor of `shape` (its element count must match)."""
    budget.charge(what, shape, tf_dtype)
    count = element_count(shape)
    if isinstance(data, DenseData):
        if data.values.size != count:
            raise invalid_argument(
                f"{what}: 'data' holds {data.values.size} elements, shape {shape_text(shape)}"
                f" needs {count}"
            )
        if tf_dtype == DT_FLOAT:
            return to_float32(data.values).reshape(shape)
        if tf_dtype == DT_BFLOAT16:
            return to_bfloat16(data.values).reshape(shape)
        return data.values.astype(wire_dtype(tf_dtype).newbyteorder("=")).reshape(shape)
    leaves = _flatten(data, what)
    if len(leaves) != count:
        raise invalid_argument(
            f"{what}: 'data' holds {len(leaves)} elements, shape {shape_text(shape)} needs"
            f" {count}"
        )
    if tf_dtype == DT_STRING:
        if not all(type(leaf) is str for leaf in leaves):
            raise invalid_argument(f"{what}: BYTES 'data' must hold strings")
        array = np.empty(count, dtype=object)
        array[:] = [leaf.encode() for leaf in leaves]
        return array.reshape(shape)
    target = wire_dtype(tf_dtype)
    try:
        values = np.asarray(leaves) if leaves else np.empty(0, dtype=target)
    except (ValueError, TypeError):  # ragged: arrays among the values
        raise invalid_argument(f"{what}: 'data' mixes arrays and values at one level") from None
    if tf_dtype == DT_BOOL:
        if leaves and values.dtype.kind != "b":
            raise invalid_argument(f"{what}: BOOL 'data' must hold true/false")
        return values.astype(np.bool_).reshape(shape)
    allowed = "f" if is_float_datatype(tf_dtype) else ""
    if leaves and (values.dtype.kind not in "iu" + allowed):
        raise invalid_argument(f"{what}: 'data' does not hold {datatype} values")
    if tf_dtype == DT_BFLOAT16:
        return to_bfloat16(values).reshape(shape)
    if leaves and target.kind in "iu" and values.size:
        info = np.iinfo(target)
        if values.min() < info.min or values.max() > info.max:
            raise invalid_argument(f"{what}: 'data' holds a value outside {datatype}'s range")
    with np.errstate(over="ignore"):
        return values.astype(target.newbyteorder("=")).reshape(shape)


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """JSON numbers as DT_BFLOAT16 the way TF casts a double to bfloat16 (Eigen's bfloat16
    constructor): to float first, then round to nearest even; beyond range +-inf, silently."""
    with np.errstate(over="ignore"):
        return to_float32(values).astype(NUMPY_DTYPE_BY_TF[DT_BFLOAT16])


# --- model names ---


def v2_model_spec(name: str, version_text: str | None, signature_name: str = "") -> ModelSpec:
    """A V2 model name and version as tfgate's ModelSpec (REST path and gRPC fields alike):
    digits are a version, any other text a version label (TF Serving's labels, e.g.
    /versions/stable); no version: the pin, else the latest AVAILABLE."""
    if not name:
        raise invalid_argument("model name is empty")
    if not version_text:
        return ModelSpec(name, None, None, signature_name)
    if version_text.isascii() and version_text.isdigit():
        digits = version_text.lstrip("0") or "0"
        if len(digits) > len(str(INT64_MAX)) or int(digits) > INT64_MAX:
            raise invalid_argument(f"model version {version_text} is out of range")
        return ModelSpec(name, int(digits), None, signature_name)
    return ModelSpec(name, None, version_text, signature_name)
