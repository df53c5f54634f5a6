"""V2 gRPC messages <-> numpy: ModelInferRequest's typed `contents` or `raw_input_contents`
into tfgate's tensors, outputs into ModelInferResponse's `raw_output_contents`.

Data path: rpc/v2_service.py -> (here) decode_infer_inputs() with the resolved signature ->
serving/service.py -> encode_infer_response(). Raw contents use codec/v2_binary.py's layout;
every size is checked against the declared shape and the request's tensor budget before an
array is built. Pure functions; thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.codec.tensor import TensorBudget
from app.codec.v2_binary import decode_raw, encode_raw
from app.codec.v2_datatypes import element_count, shape_text, v2_datatype, v2_shape, wire_dtype
from app.codec.v2_json import signature_input
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
    DT_UINT16,
    DT_UINT32,
    DT_UINT64,
    SignatureSpec,
)
from proto import open_inference_pb2

# Which InferTensorContents field carries each datatype; FP16 and BF16 have none (the
# protocol sends them only as raw contents).
CONTENTS_FIELD_BY_TF: dict[int, str] = {
    DT_BOOL: "bool_contents",
    DT_INT8: "int_contents",
    DT_INT16: "int_contents",
    DT_INT32: "int_contents",
    DT_INT64: "int64_contents",
    DT_UINT8: "uint_contents",
    DT_UINT16: "uint_contents",
    DT_UINT32: "uint_contents",
    DT_UINT64: "uint64_contents",
    DT_FLOAT: "fp32_contents",
    DT_DOUBLE: "fp64_contents",
    DT_STRING: "bytes_contents",
}
SIGNATURE_NAME = "signature_name"


def signature_name(request: open_inference_pb2.ModelInferRequest) -> str:
    """tfgate's extension: the request parameter `signature_name` picks the SignatureDef."""
    if SIGNATURE_NAME not in request.parameters:
        return ""
    parameter = request.parameters[SIGNATURE_NAME]
    if parameter.WhichOneof("parameter_choice") != "string_param":
        raise invalid_argument(f"parameter '{SIGNATURE_NAME}' must be a string")
    return parameter.string_param


def decode_infer_inputs(
    request: open_inference_pb2.ModelInferRequest,
    signature: SignatureSpec,
    budget: TensorBudget,
) -> dict[str, np.ndarray]:
    """The request's tensors by signature alias: raw_input_contents (one entry per input, in
    order) when present, else each input's typed contents."""
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise invalid_argument(
            f"expected {len(request.inputs)} raw_input_contents (one per input), got"
            f" {len(raw_contents)}"
        )
    tensors: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in tensors:
            raise invalid_argument(f"input '{tensor.name}' is given more than once")
        _, tf_dtype = signature_input(
            signature, tensor.name, tensor.datatype, request.model_name
        )
        what = f"input '{tensor.name}'"
        shape = v2_shape(list(tensor.shape), what)
        if raw_contents:
            if tensor.HasField("contents"):
                raise invalid_argument(
                    f"{what} has contents while the request uses raw_input_contents"
                )
            tensors[tensor.name] = decode_raw(
                raw_contents[index], tensor.datatype, tf_dtype, shape, what, budget
            )
        else:
            tensors[tensor.name] = _decode_contents(tensor, tf_dtype, shape, what, budget)
    return tensors


def _decode_contents(
    tensor: open_inference_pb2.ModelInferRequest.InferInputTensor,
    tf_dtype: int,
    shape: tuple[int, ...],
    what: str,
    budget: TensorBudget,
) -> np.ndarray:
    field = CONTENTS_FIELD_BY_TF.get(tf_dtype)
    if field is None:
        raise invalid_argument(
            f"{what}: {tensor.datatype} data must be sent in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise invalid_argument(
            f"{what}: contents hold {len(values)} elements, shape {shape_text(shape)} needs"
            f" {count}"
        )
    if tf_dtype == DT_STRING:
        budget.charge(what, shape, tf_dtype, extra_bytes=sum(len(v) for v in values))
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    budget.charge(what, shape, tf_dtype)
    target = np.bool_ if tf_dtype == DT_BOOL else wire_dtype(tf_dtype).newbyteorder("=")
    if tf_dtype in (DT_INT8, DT_INT16, DT_UINT8, DT_UINT16):
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(target)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise invalid_argument(
                f"{what}: contents hold a value outside {tensor.datatype}'s range"
            )
        return wide.astype(target).reshape(shape)
    return np.array(values, dtype=target).reshape(shape)


def encode_infer_response(
    model: str,
    version: int,
    request_id: str,
    outputs: Sequence[tuple[str, int, np.ndarray]],
) -> open_inference_pb2.ModelInferResponse:
    """Outputs as raw_output_contents, as Triton answers (clients read either form)."""
    response = open_inference_pb2.ModelInferResponse(
        model_name=model, model_version=str(version), id=request_id
    )
    for name, tf_dtype, array in outputs:
        entry = response.outputs.add()
        entry.name = name
        entry.datatype = v2_datatype(tf_dtype, f"output '{name}'")
        entry.shape.extend(array.shape)
        response.raw_output_contents.append(encode_raw(array, tf_dtype))
    return response
