"""V2 (Open Inference Protocol) on a real tfgate server, at the wire: the same path as TF
Serving's API (version labels and explicit versions resolve, metrics count V2 under API
"v2_infer" on REST and gRPC), the protocol's error shape and status codes, and the limits on
client-controlled sizes. The real clients are in test_v2_clients.py."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import grpc
import httpx
import ml_dtypes
import numpy as np
import orjson
import pytest

from app.core.protos import predict_pb2, prediction_service_pb2_grpc, types_pb2
from proto import open_inference_pb2 as pb
from proto import open_inference_pb2_grpc
from tests.conftest import ModelZoo
from tests.serverproc import ServerProcess

CONFIG = """model_config_list {{
  config {{
    name: "hp"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
  }}
  config {{ name: "multi_io" base_path: "{multi}" model_platform: "tensorflow" }}
  config {{ name: "bf16" base_path: "{bf16}" model_platform: "tensorflow" }}
}}
"""
X = {"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [1, 2]}


@pytest.fixture(scope="module")
def server(model_zoo: ModelZoo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("v2proto")
    base = model_zoo.base_path("half_plus_two", 1)
    model_zoo.base_path("half_plus_two", 2)
    config = directory / "models.config"
    config.write_text(CONFIG.format(
        base=base,
        multi=model_zoo.base_path("multi_io"),
        bf16=model_zoo.base_path("half_plus_two_bf16"),
    ))
    proc = ServerProcess(
        [f"--model_config_file={config}", "--grpc_implementation=grpcio"],
        directory / "server.log",
    )
    try:
        proc.start()
        with httpx.Client(base_url=proc.rest_url, timeout=60) as client:
            for _ in range(600):  # both versions AVAILABLE (model_version_policy all)
                if all(client.get(path).status_code == 200 for path in (
                    "/v2/models/hp/versions/1/ready",
                    "/v2/models/hp/versions/2/ready",
                    "/v2/models/bf16/ready",
                )):
                    break
                time.sleep(0.1)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.rest_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[open_inference_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        yield open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/v2/models/hp/infer", "2"),  # latest AVAILABLE
        ("/v2/models/hp/versions/1/infer", "1"),  # explicit version
        ("/v2/models/hp/versions/stable/infer", "1"),  # a TF Serving version label
    ],
)
def test_versions_and_labels_resolve_and_the_served_version_is_reported(
    client: httpx.Client, path: str, version: str
) -> None:
    response = client.post(path, json={"inputs": [X]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == version
    assert body["outputs"][0]["data"] == [2.5, 3.0]


def test_grpc_labels_and_versions(stub: open_inference_pb2_grpc.GRPCInferenceServiceStub) -> None:
    for version_text, served in (("", "2"), ("1", "1"), ("stable", "1")):
        request = pb.ModelInferRequest(model_name="hp", model_version=version_text)
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
        tensor.contents.fp32_contents.append(4.0)
        response = stub.ModelInfer(request, timeout=30)
        assert response.model_version == served
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [4.0]


@pytest.mark.parametrize(
    ("method", "path", "content", "headers", "status", "message"),
    [
        ("POST", "/v2/models/nope/infer", orjson.dumps({"inputs": [X]}), {}, 404,
         "Servable not found for request: Latest(nope)"),
        ("POST", "/v2/models/hp/versions/9/infer", orjson.dumps({"inputs": [X]}), {}, 404,
         "Servable not found for request: Specific(hp, 9)"),
        ("POST", "/v2/models/hp/versions/beta/infer", orjson.dumps({"inputs": [X]}), {}, 400,
         "Unrecognized servable version label: beta"),
        ("POST", "/v2/models/hp/infer", b"{nope", {}, 400, "failed to parse the request JSON"),
        ("POST", "/v2/models/hp/infer", orjson.dumps({"inputs": [X]}),
         {"Inference-Header-Content-Length": "999999"}, 400, "outside the"),
        ("POST", "/v2/models/hp/infer", orjson.dumps({"inputs": [X]}),
         {"Inference-Header-Content-Length": "-3"}, 400, "is not a byte count"),
        ("POST", "/v2/models/hp/infer",
         orjson.dumps({"inputs": [{**X, "shape": [1 << 40, 1 << 20]}]}), {}, 400,
         "a request's tensors may take at most"),
        ("POST", "/v2/models/hp/infer",
         orjson.dumps({"inputs": [X], "outputs": [{"name": "nope"}]}), {}, 400, "nope"),
        ("GET", "/v2/models/hp/infer", b"", {}, 501, "not allowed"),
        ("GET", "/v2/nothing/here", b"", {}, 404, "Not found"),
        ("GET", "/v2/models/nope", b"", {}, 404, "Servable not found"),
        ("GET", "/v2/models/nope/ready", b"", {}, 404, "Model with name nope does not exist."),
    ],
)
def test_errors_have_the_protocol_shape_and_status(
    client: httpx.Client,
    method: str,
    path: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    response = client.request(method, path, content=content, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and message in body["error"], body


@pytest.mark.parametrize(
    ("request_message", "code", "message"),
    [
        (pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
        (
            pb.ModelInferRequest(
                model_name="hp",
                inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP32", shape=[2, 1])],
                raw_input_contents=[b"\0" * 4],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expecting 8 bytes",
        ),
        (
            pb.ModelInferRequest(
                model_name="hp",
                inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP32", shape=[1 << 40, 1 << 20])],
                raw_input_contents=[b"\0" * 4],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expecting",
        ),
    ],
)
def test_grpc_errors(
    stub: open_inference_pb2_grpc.GRPCInferenceServiceStub,
    request_message: pb.ModelInferRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request_message, timeout=30)
    assert info.value.code() == code
    assert message in info.value.details()


def test_grpc_health_and_metadata(stub: open_inference_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="hp", version="stable"), timeout=10).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=10).ready
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="multi_io"), timeout=10)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("a", "FP32", [-1, 2]),
        ("b", "FP32", [-1, 2]),
    ]
    assert list(metadata.versions) == ["1"] and metadata.platform == "tensorflow_savedmodel"


def test_metrics_label_v2_requests(
    client: httpx.Client, stub: open_inference_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    assert client.post("/v2/models/multi_io/infer", json={"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
        {"name": "b", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
    ]}).status_code == 200
    request = pb.ModelInferRequest(model_name="multi_io")
    for name in ("a", "b"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 2])
        request.raw_input_contents.append(np.array([1, 2], "<f4").tobytes())
    stub.ModelInfer(request, timeout=30)
    text = client.get("/metrics").text
    for entrypoint in ("REST", "GRPC"):
        pattern = (
            r':tensorflow:serving:request_latency_count\{model_name="multi_io",'
            rf'API="v2_infer",entrypoint="{entrypoint}"\}} [1-9]'
        )
        assert re.search(pattern, text), (entrypoint, [
            line for line in text.splitlines() if "request_latency_count" in line])


def test_binary_output_on_a_json_request(client: httpx.Client) -> None:
    response = client.post(
        "/v2/models/hp/infer",
        json={"inputs": [X], "parameters": {"binary_data_output": True}},
    )
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(response.content[length:], "<f4").tolist() == [2.5, 3.0]


def test_v1_routes_still_answer_beside_v2(client: httpx.Client) -> None:
    response = client.post("/v1/models/hp:predict", json={"instances": [[1.0]]})
    assert response.json() == {"predictions": [[2.5]]}




# --- BF16 (DT_BFLOAT16) against half_plus_two_bf16: y = 0.5x + 2 computed in bfloat16 ---
# x = [1, 3, 0.1]: 0.1 is 0x3DCD as bfloat16 and y rounds to 2.046875 (0x4003).
BF16_X_BITS = [0x3F80, 0x4040, 0x3DCD]
BF16_Y_BITS = [0x4020, 0x4060, 0x4003]
BF16_Y_VALUES = [2.5, 3.5, 2.046875]


def test_bf16_metadata_and_json_infer(client: httpx.Client) -> None:
    metadata = client.get("/v2/models/bf16").json()
    assert metadata["inputs"] == [{"name": "x", "datatype": "BF16", "shape": [-1, 1]}]
    x = {"name": "x", "datatype": "BF16", "shape": [3, 1], "data": [1, 3, 0.1]}
    response = client.post("/v2/models/bf16/infer", json={"inputs": [x]})
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("y", "BF16", [3, 1])
    assert output["data"] == BF16_Y_VALUES


def test_bf16_binary_infer(client: httpx.Client) -> None:
    raw = np.array(BF16_X_BITS, "<u2").tobytes()
    header = orjson.dumps({
        "inputs": [{"name": "x", "datatype": "BF16", "shape": [3, 1],
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    })  # fmt: skip
    response = client.post(
        "/v2/models/bf16/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    (output,) = orjson.loads(response.content[:length])["outputs"]
    assert output["datatype"] == "BF16" and output["parameters"] == {"binary_data_size": 6}
    assert np.frombuffer(response.content[length:], "<u2").tolist() == BF16_Y_BITS


def test_bf16_grpc_raw_contents(stub: open_inference_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="bf16")
    request.inputs.add(name="x", datatype="BF16", shape=[3, 1])
    request.raw_input_contents.append(np.array(BF16_X_BITS, "<u2").tobytes())
    response = stub.ModelInfer(request, timeout=30)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", "BF16", [3, 1])
    ]
    assert np.frombuffer(response.raw_output_contents[0], "<u2").tolist() == BF16_Y_BITS


@pytest.mark.parametrize("content", [False, True])
def test_bf16_tf_serving_grpc_predict(server: ServerProcess, content: bool) -> None:
    # TF Serving's TensorProto: bfloat16 values as bit patterns in half_val, or tensor_content;
    # the reply's typed field is half_val (Tensor::AsProtoField).
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "bf16"
    x = request.inputs["x"]
    x.dtype = types_pb2.DT_BFLOAT16
    x.tensor_shape.dim.add(size=3)
    x.tensor_shape.dim.add(size=1)
    if content:
        x.tensor_content = np.array(BF16_X_BITS, "<u2").tobytes()
    else:
        x.half_val.extend(BF16_X_BITS)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30)
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_BFLOAT16
    assert [d.size for d in y.tensor_shape.dim] == [3, 1]
    assert list(y.half_val) == BF16_Y_BITS
    values = np.array(list(y.half_val), np.uint16).view(ml_dtypes.bfloat16)
    assert values.astype(np.float32).tolist() == BF16_Y_VALUES


def test_bf16_tf_serving_rest_predict_refuses_json(client: httpx.Client) -> None:
    # TF Serving's JSON has no bfloat16 (json_tensor.cc): its 501 and its text, unchanged.
    response = client.post("/v1/models/bf16:predict", json={"inputs": {"x": [[1.0]]}})
    assert response.status_code == 501
    assert response.json() == {"error": "Conversion of JSON Value: 1.0 to type: bfloat16"}
