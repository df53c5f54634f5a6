"""Rows 1-2 of issue 19 and their REST / tf.Example cousins: a declared shape is bounded
before anything is allocated. One float_val must not fill a [1<<28] tensor (it took the
gateway to 2.2 GB), and shapes past int64 or the limit get INVALID_ARGUMENT, not INTERNAL."""

from __future__ import annotations

import json

import grpc
import pytest

from app.core.protos import (
    classification_pb2,
    example_pb2,
    predict_pb2,
    tensor_pb2,
    types_pb2,
)
from tests.adversarial.conftest import (
    gateway_pid,
    http_exchange,
    legit_grpc_predict,
    legit_rest_predict,
    rss_bytes,
    settle_rss,
)
from tests.serverproc import ServerProcess

RSS_SLACK_BYTES = 150 << 20  # allocator noise; the attacks asked for 1 GB to 4 TiB

# The decode bounds live in the servicers and codec both gRPC transports share.
pytestmark = pytest.mark.parametrize("server", ["grpcio", "h2"], indirect=True, scope="module")


def broadcast_request(shape: list[int], dtype: int = types_pb2.DT_FLOAT) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    proto = tensor_pb2.TensorProto(dtype=dtype)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.append(b"x" * 1000)
    else:
        proto.float_val.append(1.0)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    request.inputs["x"].CopyFrom(proto)
    return request


@pytest.mark.parametrize(
    ("shape", "dtype", "detail"),
    [
        ([1 << 28], types_pb2.DT_FLOAT, "needs 1073741824 bytes"),  # row 1
        ([1 << 31], types_pb2.DT_FLOAT, "needs 8589934592 bytes"),
        ([1 << 40], types_pb2.DT_FLOAT, "needs"),  # row 2
        ([2**63 - 1], types_pb2.DT_FLOAT, "needs"),
        ([1 << 32, 1 << 32], types_pb2.DT_FLOAT, None),  # past int64: TF's own text only
        ([1 << 20, 1 << 20, 1 << 20, 1 << 20], types_pb2.DT_FLOAT, None),
        ([1 << 20], types_pb2.DT_STRING, "needs"),  # one 1000-byte string_val, a million times
    ],
)
def test_broadcast_shape_is_refused_before_allocation(
    server: ServerProcess, stub, shape: list[int], dtype: int, detail: str | None
) -> None:
    pid = gateway_pid(server)
    legit_grpc_predict(stub)
    baseline = rss_bytes(pid)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(broadcast_request(shape, dtype), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = caught.value.details()
    assert message.startswith("tensor parsing error: x"), message
    if detail is not None:
        assert detail in message and "at most" in message, message
    legit_grpc_predict(stub)
    legit_rest_predict(server.rest_port)
    assert settle_rss(pid, baseline, RSS_SLACK_BYTES) <= baseline + RSS_SLACK_BYTES


def test_broadcast_within_the_limit_still_works(server: ServerProcess, stub) -> None:
    """TF's FromProto rule stays: one value fills a shape the limit allows."""
    request = broadcast_request([1000, 1])
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs["y"].float_val) == [2.5] * 1000


def test_negative_dimension_is_invalid_argument(server: ServerProcess, stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(broadcast_request([-5, 1]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "tensor parsing error: x"


def test_classify_context_repeated_per_example_is_bounded(server: ServerProcess, stub) -> None:
    """A 1 MB context and 200,000 empty examples: 200 GB once the context is prepended."""
    pid = gateway_pid(server)
    baseline = rss_bytes(pid)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = "classify_x_to_y"
    listed = request.input.example_list_with_context
    listed.context.features.feature["pad"].bytes_list.value.append(b"p" * (1 << 20))
    empty = example_pb2.Example()
    listed.examples.extend([empty] * 200_000)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Input examples" in caught.value.details() and "at most" in caught.value.details()
    legit_grpc_predict(stub)
    assert settle_rss(pid, baseline, RSS_SLACK_BYTES) <= baseline + RSS_SLACK_BYTES


def test_rest_classify_context_repeated_per_example_is_bounded(server: ServerProcess) -> None:
    pid = gateway_pid(server)
    baseline = rss_bytes(pid)
    body = (
        b'{"signature_name": "classify_x_to_y", "context": {"pad": "'
        + b"p" * (4 << 20)
        + b'"}, "examples": ['
        + b",".join([b"{}"] * 100_000)
        + b"]}"
    )
    status, reply = http_exchange(
        server.rest_port,
        b"POST /v1/models/m:classify HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body,
    )
    assert status == 400, reply
    assert "at most" in json.loads(reply)["error"]
    legit_rest_predict(server.rest_port)
    assert settle_rss(pid, baseline, RSS_SLACK_BYTES) <= baseline + RSS_SLACK_BYTES
