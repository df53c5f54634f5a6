"""Classify/Regress codec: JSON examples -> serialized tf.Example, results -> JSON or protos.

Data path: rest/api.py -> parse_examples_json() -> service (the signature's single `inputs` tensor
is the DT_STRING [N] vector of `examples`) -> encode_classify_response() /
encode_regress_response() -> rest/api.py. rpc/server.py uses examples_from_input_proto() and the
*_result_proto() helpers. Mirrors json_tensor.cc (FillClassifyRegressRequestFromJson,
MakeJsonFromClassificationResult, MakeJsonFromRegressionResult), servables/tensorflow/util.cc
(InputToSerializedExampleTensor) and classifier.cc / regressor.cc (output checks).

Examples are serialized by hand (protobuf wire format, features in JSON order): the bytes are
what example_pb2 would parse, deterministic for a given body (cache keys), and cheap to build.
With "context", each example is serialize(context) + serialize(example): concatenating two
serialized messages merges them, which is what TF Serving feeds the model.
Response bytes follow rapidjson's PrettyWriter like every other body (see
app/codec/predict_response.py):
  classify: {\\n    "results": [[["", 3.0]], [["a", 0.5], ["b", 0.25]]\\n    ]\\n}
  regress:  {\\n    "results": [3.0, 3.5]\\n}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from app.codec.json_read import load_json_object
from app.codec.json_text import json_quote_bytes, json_type_name
from app.codec.predict_response import float32_texts
from app.codec.tensor import (
    TensorBudget,
    decode_b64_object,
    is_b64_object,
    to_float32,
)
from app.codec.tensor_json import format_error, read_signature_name
from app.codec.tensor_proto import varint
from app.core.errors import invalid_argument as invalid
from app.core.protos import classification_pb2, input_pb2, regression_pb2, types_pb2
from app.core.types import DT_FLOAT, DT_STRING, INT64_MAX, tf_dtype_of


@dataclasses.dataclass(slots=True)
class ExamplesJson:
    """A parsed classify/regress body.

    signature_name: "" when absent (TF Serving then uses serving_default).
    examples: one serialized tf.Example per JSON example, context already prepended.
    context: the serialized context Example, or None when the body has no "context".
    """

    signature_name: str
    examples: list[bytes]
    context: bytes | None = None


def parse_examples_json(
    body: bytes, method: Literal["classify", "regress"], budget: TensorBudget | None = None
) -> ExamplesJson:
    """FillClassifyRegressRequestFromJson(); raises TF Serving's errors in TF Serving's order.

    `method` only documents the caller: upstream says "When method is classify" for both.
    The examples tensor, context repeated in each, is charged to `budget` before it is built.
    """
    del method  # TF Serving's texts do not depend on it
    doc = load_json_object(bytes(body))
    signature_name = read_signature_name(doc)
    context = _example_bytes(doc["context"]) if "context" in doc else None
    if "examples" not in doc:
        raise format_error(
            doc, "When method is classify, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if type(examples) is not list:
        raise format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(doc, "'examples' value is an empty array")
    serialized = [_example_bytes(example) for example in examples]
    if budget is not None:
        charge_examples(budget, serialized, context or b"")
    if context is not None:
        serialized = [context + example for example in serialized]
    return ExamplesJson(signature_name, serialized, context)


def charge_examples(budget: TensorBudget, examples: list[bytes], context: bytes) -> None:
    """The [N] DT_STRING tensor of examples, each prefixed with `context`: a small body or
    message can spell a large context and many empty examples, N copies of the context."""
    held = sum(map(len, examples)) + len(context) * len(examples)
    budget.charge("Input examples", [len(examples)], DT_STRING, held)


# --- tf.Example wire format (example.proto / feature.proto) ----------------------------------
# Example.features = 1; Features.feature = 1 (map entry: key = 1, value = 2);
# Feature oneof: bytes_list = 1, float_list = 2, int64_list = 3; each list's values = 1 (packed).


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _example_bytes(value: Any) -> bytes:
    """MakeExampleFromJsonObject(), serialized."""
    if type(value) is not dict:
        raise invalid(f"Example must be JSON object but got JSON {json_type_name(value)}")
    entries = []
    for name, content in value.items():
        feature = _feature_bytes(name, content if type(content) is list else [content])
        entries.append(_field(1, _field(1, name.encode()) + _field(2, feature)))
    return _field(1, b"".join(entries)) if entries else b""


def _feature_bytes(name: str, values: list) -> bytes:
    """AddValueToFeature() for each value; the first value fixes the feature's kind."""
    kind: str | None = None
    items: list = []
    for value in values:
        kind = _feature_kind(name, value, kind)
        items.append(_feature_item(name, value))
    if kind is None:
        return b""  # an empty list: a Feature with no kind set
    if kind == "bytes":
        return _field(1, b"".join(_field(1, item) for item in items))
    if kind == "float":
        return _field(2, _field(1, to_float32(items).astype("<f4", copy=False).tobytes()))
    return _field(3, _field(1, b"".join(varint(item) for item in items)))


def _feature_kind(name: str, value: Any, kind: str | None) -> str:
    """The value's Feature kind, checked against the kind so far (before any conversion)."""
    value_type = type(value)
    if value is None or value_type is list or (value_type is dict and not is_b64_object(value)):
        raise invalid(
            f"Feature: {name} has element with unexpected JSON type: {json_type_name(value)}"
        )
    if value_type is str or value_type is dict:
        value_kind = "bytes"
    elif value_type is float:
        value_kind = "float"
    else:
        value_kind = "int64"  # int or bool
    if kind is not None and value_kind != kind:
        raise invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")
    return value_kind


def _feature_item(name: str, value: Any) -> Any:
    value_type = type(value)
    if value_type is str:
        return value.encode()
    if value_type is dict:
        return decode_b64_object(value)
    if value_type is float:
        return value  # stored as float32: rounds silently, beyond float's range +-inf
    if value_type is int and value > INT64_MAX:
        raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    return int(value)


def examples_from_input_proto(
    input: input_pb2.Input, budget: TensorBudget | None = None
) -> list[bytes]:
    """InputToSerializedExampleTensor(): one serialized Example per example, context first;
    charged to `budget` before the context is repeated."""
    kind = input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input.example_list.examples]
        if budget is not None:
            charge_examples(budget, examples, b"")
    elif kind == "example_list_with_context":
        listed = input.example_list_with_context
        context = listed.context.SerializeToString()
        examples = [e.SerializeToString() for e in listed.examples]
        if budget is not None:
            charge_examples(budget, examples, context)
        examples = [context + example for example in examples]
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    return examples


# --- results -------------------------------------------------------------------------------


def _shape_text(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"  # TensorShape::DebugString()


def _dtype_enum_name(array: np.ndarray) -> str:
    return types_pb2.DataType.Name(tf_dtype_of(array))


def _classification_table(
    classes: np.ndarray | None, scores: np.ndarray | None, num_examples: int | None
) -> tuple[int, int, list[list[bytes]] | None, np.ndarray | None]:
    """PostProcessClassificationResult()'s checks: (batch, classes per example, labels, scores)."""
    checked = []
    for label, array, dtype in (("classes", classes, DT_STRING), ("scores", scores, DT_FLOAT)):
        if array is None:
            continue
        array = np.asarray(array)
        if array.ndim != 2:
            raise invalid(
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(array)}"
            )
        if tf_dtype_of(array) != dtype:
            expected = types_pb2.DataType.Name(dtype)
            raise invalid(f"Expected {label} Tensor of {expected}. Got: {_dtype_enum_name(array)}")
        if num_examples is not None and array.shape[0] != num_examples:
            raise invalid(
                f"Expected {label} output batch size of {num_examples}. Got: {array.shape[0]}"
            )
        checked.append(array)
    if not checked:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    if len(checked) == 2 and checked[0].shape[1] != checked[1].shape[1]:
        raise invalid(
            "Tensors class and score should match in dim_size(1). Got "
            f"{checked[0].shape[1]} vs. {checked[1].shape[1]}"
        )
    batch, width = checked[0].shape
    labels = None if classes is None else np.asarray(classes).tolist()
    values = None if scores is None else np.asarray(scores, dtype=np.float32)
    return batch, width, labels, values


def encode_classify_response(
    classes: np.ndarray | None, scores: np.ndarray | None, *, num_examples: int | None = None
) -> bytes:
    """MakeJsonFromClassificationResult(): label "" without classes, score 0 without scores."""
    batch, width, labels, values = _classification_table(classes, scores, num_examples)
    if batch == 0:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    score_texts = [b"0.0"] * (batch * width) if values is None else float32_texts(values)
    rows = []
    for i in range(batch):
        pairs = []
        for j in range(width):
            label = json_quote_bytes(labels[i][j]) if labels is not None else b'""'
            pairs.append(b"[" + label + b", " + score_texts[i * width + j] + b"]")
        rows.append(b"[" + b", ".join(pairs) + b"]")
    return b'{\n    "results": [' + b", ".join(rows) + b"\n    ]\n}"


def _regression_values(outputs: np.ndarray, num_examples: int | None) -> np.ndarray:
    """PostProcessRegressionResult()'s checks."""
    outputs = np.asarray(outputs)
    if not (outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)):
        raise invalid(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            + _shape_text(outputs)
        )
    if num_examples is not None and outputs.shape[0] != num_examples:
        raise invalid(
            "Input batch size did not match output batch size: "
            f"{num_examples} vs. {outputs.shape[0]}"
        )
    if tf_dtype_of(outputs) != DT_FLOAT:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_enum_name(outputs)}")
    if outputs.size == 0:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return outputs.reshape(-1)


def encode_regress_response(outputs: np.ndarray, *, num_examples: int | None = None) -> bytes:
    """MakeJsonFromRegressionResult(); outputs is the `outputs` tensor, [batch] or [batch, 1]."""
    values = _regression_values(outputs, num_examples)
    return b'{\n    "results": [' + b", ".join(float32_texts(values)) + b"]\n}"


def classification_result_proto(
    classes: np.ndarray | None, scores: np.ndarray | None, *, num_examples: int | None = None
) -> classification_pb2.ClassificationResult:
    """The gRPC ClassificationResult, built from wire bytes (fast for many classes).

    Labels that are not UTF-8 get U+FFFD: proto3 string fields must hold valid UTF-8 in Python.
    """
    batch, width, labels, values = _classification_table(classes, scores, num_examples)
    if labels is None:  # scores only: every Class is 0a 05 15 <float>, built in one go
        wire = np.empty((batch, width, 7), dtype=np.uint8)
        wire[:, :, :3] = np.frombuffer(b"\x0a\x05\x15", dtype=np.uint8)
        wire[:, :, 3:] = values.astype("<f4").view(np.uint8).reshape(batch, width, 4)
        rows = [_field(1, wire[i].tobytes()) for i in range(batch)]
        return classification_pb2.ClassificationResult.FromString(b"".join(rows))
    packed = [] if values is None else values.astype("<f4").reshape(-1)
    rows = []
    for i in range(batch):
        entries = []
        for j in range(width):
            body = _field(1, _label_bytes(labels[i][j]))
            if values is not None:
                body += b"\x15" + packed[i * width + j].tobytes()  # score = 2, fixed32
            entries.append(_field(1, body))
        rows.append(_field(1, b"".join(entries)))
    return classification_pb2.ClassificationResult.FromString(b"".join(rows))


def _label_bytes(label: bytes | str) -> bytes:
    if isinstance(label, str):
        return label.encode("utf-8", "replace")
    return bytes(label).decode("utf-8", "replace").encode("utf-8")


def regression_result_proto(
    outputs: np.ndarray, *, num_examples: int | None = None
) -> regression_pb2.RegressionResult:
    """The gRPC RegressionResult for the `outputs` tensor ([batch] or [batch, 1])."""
    values = _regression_values(outputs, num_examples).astype("<f4")
    count = values.size
    # Each Regression is 0a 05 0d <4 bytes>: field 1 (length 5) holding value = 1 (fixed32).
    wire = np.empty((count, 7), dtype=np.uint8)
    wire[:, :3] = np.frombuffer(b"\x0a\x05\x0d", dtype=np.uint8)
    wire[:, 3:] = values.view(np.uint8).reshape(count, 4)
    return regression_pb2.RegressionResult.FromString(wire.tobytes())
