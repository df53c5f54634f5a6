"""numpy outputs -> V2 REST answers: JSON tensors, or a JSON header followed by Triton's binary
tensor data; and the V2 model metadata and error bodies (REST and gRPC metadata alike).

Data path position: rest/v2_routes.py (and rpc/v2_service.py for ordered_outputs and
model_metadata) after serving/service.py returned the outputs; the request side is
codec/v2_json.py. Pure functions; thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from app.codec.v2_binary import encode_raw
from app.codec.v2_datatypes import BYTES, metadata_shape, v2_datatype
from app.codec.v2_json import BINARY_DATA, BINARY_DATA_SIZE, V2InferRequest
from app.core.errors import Code, ServingError, invalid_argument
from app.core.types import (
    DEFAULT_SIGNATURE,
    DT_BFLOAT16,
    NUMPY_DTYPE_BY_TF,
    SignatureSpec,
    TensorSpec,
    tf_dtype_of,
)

PLATFORM = "tensorflow_savedmodel"


def ordered_outputs(
    outputs: dict[str, np.ndarray], requested: Sequence[str]
) -> list[tuple[str, int, np.ndarray]]:
    """(alias, TF dtype, tensor) in the requested order, else the signature's alias order
    (REST and gRPC infer answers alike)."""
    names = requested or sorted(outputs)
    return [(n, tf_dtype_of(outputs[n]), outputs[n]) for n in names]


def output_is_binary(request: V2InferRequest, name: str) -> bool:
    for output in request.outputs:
        if output.name == name and output.binary_data is not None:
            return output.binary_data
    return request.binary_data_output


def encode_infer_response(
    request: V2InferRequest,
    model: str,
    version: int,
    outputs: Sequence[tuple[str, int, np.ndarray]],
) -> tuple[bytes, int | None]:
    """(body, header length): a JSON body, or a JSON header followed by the binary outputs
    (header length then says where the JSON ends). `outputs`: (alias, TF dtype, tensor)."""
    entries = []
    binary_parts: list[bytes] = []
    for name, tf_dtype, array in outputs:
        what = f"output '{name}'"
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(tf_dtype, what),
            "shape": list(array.shape),
        }
        if output_is_binary(request, name):
            raw = encode_raw(array, tf_dtype)
            entry["parameters"] = {BINARY_DATA_SIZE: len(raw)}
            binary_parts.append(raw)
        else:
            entry["data"] = _json_data(array, entry["datatype"], what)
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = entries
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary_parts:
        return header, None
    return b"".join([header, *binary_parts]), len(header)


def _json_data(array: np.ndarray, datatype: str, what: str) -> Any:
    flat = array.reshape(-1)
    if datatype == BYTES:
        try:
            return [
                e.decode() if isinstance(e, bytes | bytearray) else str(e) for e in flat
            ]
        except UnicodeDecodeError:
            raise invalid_argument(
                f"{what} holds bytes that are not UTF-8, which JSON cannot carry: request it"
                f" with the '{BINARY_DATA}' parameter"
            ) from None
    if flat.dtype == np.float16 or flat.dtype == NUMPY_DTYPE_BY_TF[DT_BFLOAT16]:
        # orjson writes neither: float32 holds every FP16/BF16 value exactly.
        return flat.astype(np.float32)
    return np.ascontiguousarray(flat)


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def model_metadata(
    name: str, versions: Sequence[int], signatures: Mapping[str, SignatureSpec]
) -> dict[str, Any]:
    """The V2 model metadata (the same fields REST and gRPC return): the serving_default
    signature's tensors, FAILED_PRECONDITION for a model without one."""
    signature = signatures.get(DEFAULT_SIGNATURE)
    if signature is None:
        raise ServingError(
            Code.FAILED_PRECONDITION,
            f'model {name} has no "{DEFAULT_SIGNATURE}" signature to describe',
        )
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(spec, "input") for spec in signature.inputs.values()],
        "outputs": [_tensor_metadata(spec, "output") for spec in signature.outputs.values()],
    }


def _tensor_metadata(spec: TensorSpec, kind: str) -> dict[str, Any]:
    return {
        "name": spec.alias,
        "datatype": v2_datatype(spec.dtype, f"{kind} '{spec.alias}'"),
        "shape": metadata_shape(spec.shape),
    }
