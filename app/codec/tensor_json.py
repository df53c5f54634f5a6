r"""TF Serving's REST predict API, request side: request bodies -> numpy tensors.

Data path: rest/api.py -> parse_predict_json() -> (service looks up the signature) ->
decode_predict_inputs() -> service; the response is written by codec/predict_response.py.
Mirrors tensorflow_serving/util/json_tensor.cc (FillPredictRequestFromJson, MakeJsonFromTensors).
The JSON tensor format spans five modules: codec/json_read.py (body -> JSON document),
codec/tensor.py (JSON values -> a tensor of one dtype), codec/json_dense.py (bodies of many plain
float arrays -> float64 buffers, skipping the JSON document), this one (the predict body's keys,
rows and columns, the choice of dense, vectorised or exact conversion), codec/predict_response.py
(the layout of responses)
and codec/json_text.py (numbers and strings as rapidjson writes them); codec/example.py reuses
them.
Pure functions; thread-safe.

Converting. A body with enough numbers and lists (json_dense.worth_dense(): by structure, not
byte length) whose tensors are regular arrays of numbers is read by simdjson straight into float64
buffers; if the signature wants DT_FLOAT/DT_DOUBLE inputs they become the tensors and orjson never
runs (codec/json_dense.py says why that is the same answer). Otherwise each tensor is first tried
vectorised (np.array over the parsed lists, then checks that guarantee TF Serving would accept the
same values) and otherwise walked exactly
as FillTensorProto() does, so every error is TF Serving's first error, word for word.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from app.codec.json_dense import (
    DenseBody,
    dense_float_tensor,
    read_dense_body,
    worth_dense,
)
from app.codec.json_read import load_json_object
from app.codec.json_text import (
    json_value_text,
)
from app.codec.tensor import (
    INT_LIMITS,
    TensorBudget,
    decode_rows_exact,
    dense_shape,
    fill_exact,
    floats_fast,
    hidden_bools,
    is_b64_object,
    is_element_object,
    leaves_to_array,
    strings_fast,
    unlimited_budget,
)
from app.core.errors import ServingError, invalid_argument
from app.core.types import (
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_STRING,
    NUMPY_DTYPE_BY_TF,
    RequestFormat,
    SignatureSpec,
)

# ---------------------------------------------------------------------------------------------
# Predict request: JSON -> tensors (FillPredictRequestFromJson)
# ---------------------------------------------------------------------------------------------

_EXACT_MAX = 16  # tensors this small skip the vectorised path (measured crossover)
_DENSE_DTYPES = frozenset((DT_FLOAT, DT_DOUBLE))  # what dense_float_tensor() fills

_BOTH_KEYS_TEXT = (
    "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
)


@dataclasses.dataclass(slots=True)
class PredictJson:
    """A parsed predict body (step 1): the service looks up `signature_name`, then decodes.

    signature_name is "" when the body has none (TF Serving then uses serving_default).
    format is "row" when the body has "instances", else "columnar" (a body with neither key is
    rejected by decode_predict_inputs, after the signature lookup, as TF Serving does).
    A body of many plain float numbers arrives as `dense` (codec/json_dense.py) and is only
    parsed by orjson if the signature wants something else; every other body as `_doc`.
    """

    signature_name: str
    format: RequestFormat
    _doc: dict | None = dataclasses.field(repr=False)
    _body: bytes = dataclasses.field(default=b"", repr=False)
    _bool_text: bool | None = dataclasses.field(default=None, repr=False)
    dense: DenseBody | None = dataclasses.field(default=None, repr=False)

    def may_have_bools(self) -> bool:
        """Whether the body spells true/false anywhere (scanned once, only when asked)."""
        if self._bool_text is None:
            self._bool_text = b"true" in self._body or b"false" in self._body
        return self._bool_text

    def document(self) -> dict:
        if self._doc is None:
            self._doc = load_json_object(self._body)
        return self._doc


def parse_predict_json(body: bytes) -> PredictJson:
    """Parses the body and reads signature_name; raises TF Serving's JSON errors."""
    data = bytes(body)
    if worth_dense(data) and (dense := read_dense_body(data)) is not None:
        return PredictJson(dense.signature_name, dense.format, None, data, dense=dense)
    doc = load_json_object(data)
    signature_name = read_signature_name(doc)
    fmt: RequestFormat = "row" if "instances" in doc else "columnar"
    return PredictJson(signature_name, fmt, doc, data)


def read_signature_name(doc: dict) -> str:
    """FillSignature(): "" when the key is absent (the caller maps "" to serving_default)."""
    if "signature_name" not in doc:
        return ""
    name = doc["signature_name"]
    if type(name) is not str:
        raise invalid_argument(
            f"JSON Value: {json_value_text(doc)} not formatted correctly."
            " 'signature_name' key must be a string value."
        )
    return name


def format_error(value: Any, text: str) -> ServingError:
    """json_tensor.cc FormatError(): the offending JSON value, pretty-printed, then the text."""
    return invalid_argument(f"JSON Value: {json_value_text(value)} {text}")


def decode_predict_inputs(
    parsed: PredictJson, signature: SignatureSpec, budget: TensorBudget | None = None
) -> dict[str, np.ndarray]:
    """The request's tensors keyed by input alias, each in the input's numpy dtype (step 2).

    Each tensor's bytes, from the shape its first elements spell (O(rank)), are charged to
    `budget` before numpy builds it; a ragged value fails the exact walk later anyway.
    """
    if not signature.inputs:
        name = parsed.signature_name or "DEFAULT"
        raise invalid_argument(f"Failed to get input map for signature: {name}")
    budget = budget or unlimited_budget()
    if parsed.dense is not None:
        spent_bytes = budget.used_bytes
        tensors = _dense_inputs(parsed.dense, signature, budget)
        if tensors:
            return tensors
        budget.used_bytes = spent_bytes  # the paths below charge what they build themselves
    doc = parsed.document()
    if "instances" in doc:
        if "inputs" in doc:
            raise format_error(doc, _BOTH_KEYS_TEXT)
        instances = doc["instances"]
        if type(instances) is not list:
            raise format_error(doc, "Expecting 'instances' to be an list/array")
        if not instances:
            raise format_error(doc, "No values in 'instances' array")
        _charge_rows(budget, instances, signature)
        return _decode_rows(instances, signature, parsed.may_have_bools)
    if "inputs" in doc:
        return _decode_columns(doc["inputs"], signature, parsed.may_have_bools, budget)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _dense_inputs(
    dense: DenseBody, signature: SignatureSpec, budget: TensorBudget
) -> dict[str, np.ndarray] | None:
    """The same tensors _decode_rows/_decode_columns would make, or None to let them decide."""
    if None in dense.tensors:
        if len(signature.inputs) != 1:
            return None  # their error: a plain list for a multi-input signature
        ((name, spec),) = signature.inputs.items()
        flat, shape = dense.tensors[None]
        if spec.dtype in _DENSE_DTYPES:
            budget.charge(f"Input tensor {name}", shape, spec.dtype)
        tensor = dense_float_tensor(flat, shape, spec.dtype)
        return None if tensor is None else {name: tensor}
    result = {}
    for name, spec in signature.inputs.items():
        if name not in dense.tensors:
            if name in signature.inputs_with_defaults:
                continue
            return None  # their error: a missing named input
        flat, shape = dense.tensors[name]
        if spec.dtype not in _DENSE_DTYPES:
            return None
        budget.charge(f"Input tensor {name}", shape, spec.dtype)
        tensor = dense_float_tensor(flat, shape, spec.dtype)
        if tensor is None:
            return None
        result[name] = tensor
    return result


def _decode_rows(
    instances: list, signature: SignatureSpec, bools: Callable[[], bool]
) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList(): a vectorised attempt, else the exact element walk."""
    names = sorted(signature.inputs)
    if type(instances[0]) is not dict and len(names) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors"
            " required as per tensorinfo_map"
        )
    result: dict[str, np.ndarray] | None = None
    if is_element_object(instances[0]):
        result = _object_rows_fast(instances, signature, bools)
    else:
        tensor = _tensor_fast(instances, signature.inputs[names[0]].dtype, bools)
        result = None if tensor is None else {names[0]: tensor}
    return result if result is not None else decode_rows_exact(instances, signature)


def _object_rows_fast(
    instances: list, signature: SignatureSpec, bools: Callable[[], bool]
) -> dict[str, np.ndarray] | None:
    keys = set(signature.inputs)
    for element in instances:
        if not (is_element_object(element) and element.keys() == keys):
            return None
    result = {}
    for name, spec in signature.inputs.items():
        tensor = _tensor_fast([element[name] for element in instances], spec.dtype, bools)
        if tensor is None:
            return None
        result[name] = tensor
    return result


def _decode_columns(
    value: Any, signature: SignatureSpec, bools: Callable[[], bool], budget: TensorBudget
) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap(); inputs with a default in the signature may be left out."""
    names = sorted(signature.inputs)
    if type(value) is not dict or is_b64_object(value):
        if len(names) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors"
                " required as per tensorinfo_map"
            )
        dtype = signature.inputs[names[0]].dtype
        _charge_value(budget, names[0], value, dtype, [])
        return {names[0]: _tensor(value, dtype, bools)}
    found = {}
    for name in names:
        if name not in value:
            if name in signature.inputs_with_defaults:
                continue
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        dtype = signature.inputs[name].dtype
        _charge_value(budget, name, value[name], dtype, [])
        found[name] = _tensor(value[name], dtype, bools)
    return {name: found[name] for name in signature.inputs if name in found}


def _charge_rows(budget: TensorBudget, instances: list, signature: SignatureSpec) -> None:
    """Each input's [batch, *shape of the first instance's value] (what a valid body holds)."""
    first = instances[0]
    batch = [len(instances)]
    if is_element_object(first):
        for name, spec in signature.inputs.items():
            if name in first:
                _charge_value(budget, name, first[name], spec.dtype, batch)
    elif len(signature.inputs) == 1:
        ((name, spec),) = signature.inputs.items()
        _charge_value(budget, name, first, spec.dtype, batch)


def _charge_value(
    budget: TensorBudget, name: str, value: Any, dtype: int, outer: list[int]
) -> None:
    try:
        shape = outer + dense_shape(value)
    except ServingError:
        return  # nested past numpy's rank: decoding reports it in TF Serving's words
    budget.charge(f"Input tensor {name}", shape, dtype)


def _tensor(value: Any, dtype: int, bools: Callable[[], bool]) -> np.ndarray:
    tensor = _tensor_fast(value, dtype, bools)
    if tensor is not None:
        return tensor
    leaves: list = []
    shape = fill_exact(value, dtype, leaves)
    return leaves_to_array(leaves, shape, dtype)


def _tensor_fast(value: Any, dtype: int, bools: Callable[[], bool]) -> np.ndarray | None:
    """Vectorised FillTensorProto for well-formed values; None means "use the exact walk".

    Never wrong, only sometimes unable: every condition that could make TF Serving answer
    differently (ragged lists, wrong JSON types, bools among numbers) gives None.
    """
    if dtype == DT_STRING:
        return strings_fast(value)
    if dtype not in INT_LIMITS and dtype not in (DT_FLOAT, DT_DOUBLE, DT_BOOL):
        return None
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return None
    if 0 < array.size <= _EXACT_MAX:
        return None  # for a handful of values the exact walk is cheaper than numpy's checks
    target = NUMPY_DTYPE_BY_TF[dtype]
    kind = array.dtype.kind
    if array.size == 0:
        return np.zeros(array.shape, dtype=target) if kind in "biuf" else None
    if dtype == DT_BOOL:
        return array if kind == "b" else None
    if kind not in "iuf" or hidden_bools(value, array, bools):
        return None
    if dtype in (DT_FLOAT, DT_DOUBLE):
        return floats_fast(array, dtype)
    if kind == "f":
        return None
    low, high = INT_LIMITS[dtype]
    if array.min() < low or array.max() > high:
        return None
    return array.astype(target)
