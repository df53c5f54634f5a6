"""bench/v2_protocol.py sends the same values on every API, and the load generator's targets
carry V2's headers and method."""

from __future__ import annotations

import numpy as np
import orjson

from app.codec import v2_json
from app.codec.tensor import unlimited_budget
from app.core.types import DT_FLOAT, SignatureSpec, TensorSpec
from bench import v2_protocol
from bench.loadgen import HttpTarget
from bench.workloads import Workload
from proto import open_inference_pb2

SIGNATURE = SignatureSpec("serving_default", "", {"x": TensorSpec("x", "x:0", DT_FLOAT, None)}, {})


def decoded(body: bytes, header_length: int | None) -> np.ndarray:
    request = v2_json.parse_infer_request(body, header_length)
    return v2_json.decode_inputs(request, SIGNATURE, "dnn", unlimited_budget())["x"]


def test_every_v2_body_carries_the_tf_serving_values() -> None:
    array = Workload("dnn").array()
    tf_values = np.array(orjson.loads(Workload("dnn").rest_body())["instances"], np.float32)
    json_values = decoded(v2_protocol.v2_json_body(array), None)
    assert np.array_equal(json_values, tf_values)  # same 6-digit text as the TF body
    body, length = v2_protocol.v2_binary_body(array)
    assert np.array_equal(decoded(body, length), array)
    request = open_inference_pb2.ModelInferRequest.FromString(
        v2_protocol.v2_grpc_request("dnn", array)
    )
    assert list(request.inputs[0].shape) == [1, 256]
    assert np.array_equal(np.frombuffer(request.raw_input_contents[0], "<f4"), array.ravel())


def test_targets_cover_the_five_apis() -> None:
    by_name = v2_protocol.targets(1, 2, "dnn")
    assert set(by_name) == set(v2_protocol.TARGETS)
    binary = by_name["v2_rest_binary"]
    assert isinstance(binary, HttpTarget)
    head = binary.request_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"Content-Type: application/octet-stream" in head
    assert b"Inference-Header-Content-Length: " in head
    assert by_name["v2_grpc"].method == "/inference.GRPCInferenceService/ModelInfer"  # type: ignore[union-attr]


def test_response_length_ignores_v2_inference_header_length() -> None:
    from bench.loadgen import _parse_response

    body = b"x" * 40
    response = (
        b"HTTP/1.1 200 OK\r\ninference-header-content-length: 12\r\n"
        b"content-type: application/octet-stream\r\ncontent-length: 40\r\n\r\n" + body
    )
    head_bytes = len(response) - len(body)
    assert _parse_response(bytearray(response)) == (200, head_bytes + 40)
    assert _parse_response(bytearray(response[:-1])) == (0, 0)
