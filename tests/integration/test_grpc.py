"""TF Serving's gRPC contract (section b) against a real `tensorflow_model_server` process.

One module-scoped server serves TF Serving's test models and tfgate's exported ones through
a model config file, on TCP and a UNIX socket, with the health service on. Every RPC is
called with the official generated stubs (tensorflow-serving-api, grpcio-health-checking,
grpcio-reflection); TensorProtos are built and read here with numpy, independently of
tfgate's codec. tests/integration/test_grpc_*.py cover the flags that need their own server.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app.core.errors import GRPC_STATUS_BY_CODE, Code, ServingError, StartupError
from app.core.protos import (
    classification_pb2,
    example_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    tensor_pb2,
    types_pb2,
)
from app.core.types import ModelSpec
from app.rpc.server import parse_channel_arguments
from app.rpc.services import model_spec_from_proto, translated
from tests.serverproc import ServerProcess

ZOO_MODELS = ("multi_io", "int_ops", "strings", "bools", "classifier", "slow")


def model_entry(name: str, base_path: pathlib.Path, extra: str = "") -> str:
    return (f'config {{ name: "{name}" base_path: "{base_path}" '
            f'model_platform: "tensorflow" {extra} }}')


def model_config_text(tfs: pathlib.Path, zoo: pathlib.Path) -> str:
    entries = [
        model_entry("half_plus_two", tfs / "saved_model_half_plus_two_cpu"),
        model_entry("half_plus_three", tfs / "saved_model_half_plus_three"),
        model_entry("tf2", tfs / "saved_model_half_plus_two_tf2_cpu"),
        model_entry(
            "two_versions", tfs / "saved_model_half_plus_two_2_versions",
            "model_version_policy { all {} } version_labels { key: 'stable' value: 123 } "
            "version_labels { key: 'canary' value: 124 }",
        ),
        *(model_entry(name, zoo / name) for name in ZOO_MODELS),
    ]
    return "model_config_list {\n  " + "\n  ".join(entries) + "\n}\n"


CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
MAX_MESSAGE = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


# --- TensorProto helpers (numpy only; independent of tfgate's codec) ---

DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}


def tensor(values: Any, dtype: int, *, content: bool = False) -> tensor_pb2.TensorProto:
    """A TensorProto with the values in the typed *_val field, or in tensor_content."""
    np_dtype, field = DTYPES[dtype]
    array = np.asarray(values, dtype=np_dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for dim in array.shape:
        proto.tensor_shape.dim.add(size=dim)
    if content:
        proto.tensor_content = array.astype(array.dtype.newbyteorder("<")).tobytes()
    else:
        getattr(proto, field).extend(array.reshape(-1).tolist())
    return proto


def to_numpy(proto: tensor_pb2.TensorProto) -> np.ndarray:
    np_dtype, field = DTYPES[proto.dtype]
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, np_dtype.newbyteorder("<")).reshape(shape)
    values = list(getattr(proto, field))
    return np.array(values, dtype=np_dtype).reshape(shape)


def spec(name: str, signature: str = "", version: int | None = None,
         label: str | None = None) -> model_pb2.ModelSpec:
    proto = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        proto.version.value = version
    if label is not None:
        proto.version_label = label
    return proto


def example(**features: float) -> example_pb2.Example:
    proto = example_pb2.Example()
    for key, value in features.items():
        proto.features.feature[key].float_list.value.append(value)
    return proto


def example_input(target: Any, *examples: example_pb2.Example,
                  context: example_pb2.Example | None = None) -> None:
    if context is None:
        target.example_list.examples.extend(examples)
    else:
        target.example_list_with_context.context.CopyFrom(context)
        target.example_list_with_context.examples.extend(examples)


def predict_request(name: str, inputs: dict[str, tensor_pb2.TensorProto], **kw: Any
                    ) -> predict_pb2.PredictRequest:
    output_filter = kw.pop("output_filter", ())
    request = predict_pb2.PredictRequest(model_spec=spec(name, **kw))
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    return request


def x_input(values: list[float], *, content: bool = False) -> dict[str, tensor_pb2.TensorProto]:
    return {"x": tensor(np.asarray(values, np.float32).reshape(-1, 1), types_pb2.DT_FLOAT,
                        content=content)}


# --- server and clients ---


def wait_for_channel(channel: grpc.Channel, server: ServerProcess, timeout: float = 60) -> None:
    """gRPC starts listening right after REST (which ServerProcess waits for)."""
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise AssertionError(f"gRPC did not become ready:\n{server.log()}") from None


# Every test here runs against both gRPC servers: tfgate's HTTP/2 one (the default,
# --grpc_implementation=h2) and grpc.aio (selected by giving grpc core's channel arguments).
GRPC_SERVERS = {
    "h2": ["--grpc_implementation=h2"],
    "grpcio": [
        "--grpc_channel_arguments=grpc.max_connection_age_ms=3600000,"
        "grpc.http2.max_pings_without_data=0,grpc.primary_user_agent=tfgate-test",
    ],
}


@pytest.fixture(scope="module", params=sorted(GRPC_SERVERS))
def server(request, tfs_testdata, model_zoo, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("grpc")
    for name in ZOO_MODELS:
        model_zoo.base_path(name)
    config = tmp / "models.config"
    config.write_text(model_config_text(tfs_testdata, model_zoo.root))
    proc = ServerProcess(
        [
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=0",
            f"--grpc_socket_path={tmp / 'grpc.sock'}",
            "--enable_grpc_healthcheck_service",
            "--grpc_max_threads=64",
            *GRPC_SERVERS[request.param],
        ],
        tmp / "server.log",
    )
    proc.socket_path = tmp / "grpc.sock"  # type: ignore[attr-defined]
    proc.grpc_server = request.param  # type: ignore[attr-defined]
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=MAX_MESSAGE) as ch:
        wait_for_channel(ch, server)
        yield ch


@pytest.fixture(scope="module")
def prediction(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def rpc_error(call: Any, request: Any, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=kw.pop("timeout", 30), **kw)
    return info.value


# --- Predict ---


@pytest.mark.parametrize("content", [False, True], ids=["typed", "tensor_content"])
def test_predict_half_plus_two(prediction, content: bool) -> None:  # type: ignore[no-untyped-def]
    response = prediction.Predict(
        predict_request("half_plus_two", x_input([1.0, 2.0, 5.0], content=content)), timeout=30
    )
    assert response.model_spec == spec("half_plus_two", "serving_default", version=123)
    y = response.outputs["y"]
    assert list(response.outputs) == ["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    # Without --enable_serialization_as_tensor_content outputs come in the typed field.
    assert not y.tensor_content and len(y.float_val) == 3
    np.testing.assert_array_equal(to_numpy(y), [[2.5], [3.0], [4.5]])


@pytest.mark.parametrize(
    ("name", "kw", "values", "expected", "version"),
    [
        ("half_plus_three", {}, [1.0, 2.0, 5.0], [3.5, 4.0, 5.5], 123),
        ("two_versions", {}, [2.0], [3.0], 124),
        ("two_versions", {"label": "stable"}, [2.0], [3.0], 123),
        ("two_versions", {"label": "canary"}, [80.0], [42.0], 124),
        ("two_versions", {"version": 123}, [2.0], [3.0], 123),
        ("half_plus_two", {"signature": "serving_default"}, [2.0], [3.0], 123),
    ],
)
def test_predict_versions_and_labels(prediction, name, kw, values, expected, version) -> None:  # type: ignore[no-untyped-def]
    response = prediction.Predict(predict_request(name, x_input(values), **kw), timeout=30)
    assert response.model_spec.name == name
    assert response.model_spec.version.value == version
    assert response.model_spec.signature_name == "serving_default"
    assert not response.model_spec.version_label
    np.testing.assert_allclose(to_numpy(response.outputs["y"]).reshape(-1), expected)


def test_predict_tf2_model_feeds_declared_shape(prediction) -> None:  # type: ignore[no-untyped-def]
    request = predict_request("tf2", {"x": tensor([2.0], types_pb2.DT_FLOAT)})
    response = prediction.Predict(request, timeout=30)
    np.testing.assert_allclose(to_numpy(response.outputs["y"]), [3.0])


def test_predict_other_signature(prediction) -> None:  # type: ignore[no-untyped-def]
    request = predict_request(
        "half_plus_two", {"inputs": tensor([[2.0]], types_pb2.DT_FLOAT)},
        signature="regress_x2_to_y3",
    )
    response = prediction.Predict(request, timeout=30)
    assert response.model_spec.signature_name == "regress_x2_to_y3"
    np.testing.assert_allclose(to_numpy(response.outputs["outputs"]), [[4.0]])


@pytest.mark.parametrize("content", [False, True], ids=["typed", "tensor_content"])
def test_predict_multi_io_and_output_filter(prediction, content: bool) -> None:  # type: ignore[no-untyped-def]
    inputs = {
        "a": tensor([[1.0, 2.0], [5.0, 6.0]], types_pb2.DT_FLOAT, content=content),
        "b": tensor([[3.0, 4.0], [7.0, 8.0]], types_pb2.DT_FLOAT, content=content),
    }
    response = prediction.Predict(predict_request("multi_io", inputs), timeout=30)
    assert sorted(response.outputs) == ["product", "sum"]
    np.testing.assert_array_equal(to_numpy(response.outputs["sum"]), [[4, 6], [12, 14]])
    np.testing.assert_array_equal(to_numpy(response.outputs["product"]), [[3, 8], [35, 48]])
    filtered = prediction.Predict(
        predict_request("multi_io", inputs, output_filter=["product"]), timeout=30
    )
    assert list(filtered.outputs) == ["product"]


@pytest.mark.parametrize("content", [False, True], ids=["typed", "tensor_content"])
def test_predict_int_ops(prediction, content: bool) -> None:  # type: ignore[no-untyped-def]
    inputs = {
        "i32": tensor([2, -3, 2**30], types_pb2.DT_INT32, content=content),
        "i64": tensor([2**40, -1, 2**62], types_pb2.DT_INT64, content=content),
    }
    response = prediction.Predict(predict_request("int_ops", inputs), timeout=30)
    out32, out64 = response.outputs["out32"], response.outputs["out64"]
    assert (out32.dtype, out64.dtype) == (types_pb2.DT_INT32, types_pb2.DT_INT64)
    assert list(out32.int_val) == [4, -6, -(2**31)]  # int32 wraps, as in TF
    assert list(out64.int64_val) == [2**40 + 1, 0, 2**62 + 1]


def test_predict_strings(prediction) -> None:  # type: ignore[no-untyped-def]
    values = [b"ab", b"\xff\x00z", b""]
    response = prediction.Predict(
        predict_request("strings", {"s": tensor(values, types_pb2.DT_STRING)}), timeout=30
    )
    assert response.outputs["upper"].dtype == types_pb2.DT_STRING
    assert list(response.outputs["upper"].string_val) == [b"AB", b"\xff\x00Z", b""]
    assert list(response.outputs["echo_bytes"].string_val) == values
    assert list(response.outputs["length"].int_val) == [2, 3, 0]


@pytest.mark.parametrize("content", [False, True], ids=["typed", "tensor_content"])
def test_predict_bools(prediction, content: bool) -> None:  # type: ignore[no-untyped-def]
    response = prediction.Predict(
        predict_request("bools", {"flag": tensor([True, False], types_pb2.DT_BOOL,
                                                 content=content)}),
        timeout=30,
    )
    assert response.outputs["not_flag"].dtype == types_pb2.DT_BOOL
    assert list(response.outputs["not_flag"].bool_val) == [False, True]


def test_predict_classifier_outputs(prediction) -> None:  # type: ignore[no-untyped-def]
    inputs = {"x": tensor([[1.0, 0.0, -1.0, 2.0]], types_pb2.DT_FLOAT)}
    response = prediction.Predict(predict_request("classifier", inputs), timeout=30)
    assert list(response.outputs["classes"].string_val) == [b"class_0", b"class_1", b"class_2"]
    scores = to_numpy(response.outputs["scores"])
    assert scores.shape == (1, 3)
    assert scores.sum() == pytest.approx(1.0, abs=1e-5)


def test_predict_large_message(prediction) -> None:  # type: ignore[no-untyped-def]
    """Above gRPC's 4 MB default: the server allows INT32_MAX both ways, as TF Serving."""
    values = np.arange(1_500_000, dtype=np.float32)  # 6 MB each way
    response = prediction.Predict(
        predict_request("half_plus_two", x_input(values.tolist(), content=True)), timeout=60
    )
    np.testing.assert_allclose(to_numpy(response.outputs["y"]).reshape(-1), values * 0.5 + 2)


# --- Classify / Regress / MultiInference ---


def test_classify_scores_only_signature(prediction) -> None:  # type: ignore[no-untyped-def]
    request = classification_pb2.ClassificationRequest(
        model_spec=spec("half_plus_two", "classify_x_to_y"))
    example_input(request.input, example(x=2.0), example(x=20.0))
    response = prediction.Classify(request, timeout=30)
    assert response.model_spec == spec("half_plus_two", "classify_x_to_y", version=123)
    got = [[(c.label, c.score) for c in cls.classes]
           for cls in response.result.classifications]
    assert got == [[("", 3.0)], [("", 12.0)]]


def test_classify_classes_and_scores_with_context(prediction) -> None:  # type: ignore[no-untyped-def]
    plain = classification_pb2.ClassificationRequest(model_spec=spec("classifier", "classify"))
    example_input(plain.input, example(f0=1.0, f1=0.5, f2=-1.0, f3=2.0))
    with_context = classification_pb2.ClassificationRequest(
        model_spec=spec("classifier", "classify"))
    example_input(with_context.input, example(f1=0.5, f2=-1.0, f3=2.0),
                  context=example(f0=1.0))
    first = prediction.Classify(plain, timeout=30)
    second = prediction.Classify(with_context, timeout=30)
    classes = first.result.classifications[0].classes
    assert [c.label for c in classes] == ["class_0", "class_1", "class_2"]
    assert sum(c.score for c in classes) == pytest.approx(1.0, abs=1e-5)
    assert second.result == first.result


@pytest.mark.parametrize(
    ("name", "signature", "xs", "expected"),
    [
        ("half_plus_two", "regress_x_to_y", [2.0, 80.0], [3.0, 42.0]),
        ("half_plus_two", "regress_x_to_y2", [2.0], [4.0]),
        ("tf2", "regress_x_to_y", [2.0], [3.0]),  # method_name predict: no check by default
        ("half_plus_three", "tensorflow/serving/regress", [2.0], [4.0]),
    ],
)
def test_regress(prediction, name, signature, xs, expected) -> None:  # type: ignore[no-untyped-def]
    request = regression_pb2.RegressionRequest(model_spec=spec(name, signature))
    example_input(request.input, *(example(x=x) for x in xs))
    response = prediction.Regress(request, timeout=30)
    assert response.model_spec == spec(name, signature, version=123)
    assert [r.value for r in response.result.regressions] == pytest.approx(expected)


def test_regress_classifier(prediction) -> None:  # type: ignore[no-untyped-def]
    request = regression_pb2.RegressionRequest(model_spec=spec("classifier", "regress"))
    example_input(request.input, example(f0=1.0), example(f0=1.0, f1=1.0))
    response = prediction.Regress(request, timeout=30)
    assert len(response.result.regressions) == 2


def test_multi_inference(prediction) -> None:  # type: ignore[no-untyped-def]
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(model_spec=spec("half_plus_two", "classify_x_to_y"), method_name=CLASSIFY)
    request.tasks.add(model_spec=spec("half_plus_two", "regress_x_to_y"), method_name=REGRESS)
    request.tasks.add(model_spec=spec("half_plus_two", "regress_x_to_y2"), method_name=REGRESS)
    example_input(request.input, example(x=2.0), example(x=4.0))
    response = prediction.MultiInference(request, timeout=30)
    first, second, third = response.results
    assert first.model_spec == spec("half_plus_two", "classify_x_to_y", version=123)
    assert [c.classes[0].score for c in first.classification_result.classifications] == [3, 4]
    assert second.model_spec == spec("half_plus_two", "regress_x_to_y", version=123)
    assert [r.value for r in second.regression_result.regressions] == [3.0, 4.0]
    assert [r.value for r in third.regression_result.regressions] == [4.0, 5.0]


@pytest.mark.parametrize("model", ["half_plus_two", "tf2"])
def test_multi_inference_tf_serving_e2e(prediction, model: str) -> None:  # type: ignore[no-untyped-def]
    """TF Serving's testMultiInference / testMultiInferenceTf2 on its own exports: the TF2
    one's classify and regress signatures read different input tensors."""
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(model_spec=spec(model, "regress_x_to_y"), method_name=REGRESS)
    request.tasks.add(model_spec=spec(model, "classify_x_to_y"), method_name=CLASSIFY)
    example_input(request.input, example(x=2.0))
    response = prediction.MultiInference(request, timeout=30)
    assert len(response.results) == 2
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for task, result in zip(request.tasks, response.results, strict=True):
        assert result.model_spec.name == model
        assert result.model_spec.signature_name == task.model_spec.signature_name
        assert result.model_spec.version.value == 123


# --- GetModelMetadata / GetModelStatus ---


def test_get_model_metadata_matches_tf_serving(prediction, tfs_testdata: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec("half_plus_two"), metadata_field=["signature_def"])
    response = prediction.GetModelMetadata(request, timeout=30)
    assert response.model_spec == spec("half_plus_two", version=123)
    assert list(response.metadata) == ["signature_def"]
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(signature_defs)
    as_json = json_format.MessageToDict(
        signature_defs, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    fixture = json.loads(
        (tfs_testdata / "fixtures" / "half_plus_two_model_metadata.json").read_text())
    assert as_json == fixture["metadata"]["signature_def"]


def test_get_model_metadata_by_label(prediction) -> None:  # type: ignore[no-untyped-def]
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec("two_versions", label="stable"), metadata_field=["signature_def"])
    response = prediction.GetModelMetadata(request, timeout=30)
    assert response.model_spec == spec("two_versions", version=123)


def status_entries(response: get_model_status_pb2.GetModelStatusResponse) -> list[tuple]:
    return [(s.version, s.state, s.status.error_code, s.status.error_message)
            for s in response.model_version_status]


def test_get_model_status(models) -> None:  # type: ignore[no-untyped-def]
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec("two_versions"))
    # ServableStateMonitor lists versions newest first.
    assert status_entries(models.GetModelStatus(request, timeout=30)) == [
        (124, available, 0, ""), (123, available, 0, "")]
    one = get_model_status_pb2.GetModelStatusRequest(model_spec=spec("two_versions", version=123))
    assert status_entries(models.GetModelStatus(one, timeout=30)) == [(123, available, 0, "")]
    # A label is not resolved by GetModelStatus: every version is listed.
    labeled = get_model_status_pb2.GetModelStatusRequest(
        model_spec=spec("two_versions", label="stable"))
    assert len(models.GetModelStatus(labeled, timeout=30).model_version_status) == 2


# --- errors: code and TF Serving's text ---

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _multi(*tasks: tuple[str, str, str], examples: int = 1) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for name, signature, method in tasks:
        request.tasks.add(model_spec=spec(name, signature), method_name=method)
    example_input(request.input, *(example(x=1.0) for _ in range(examples)))
    return request


def _classify(
    name: str, signature: str = "", n: int = 1
) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest(model_spec=spec(name, signature))
    example_input(request.input, *(example(x=1.0) for _ in range(n)))
    return request


ERROR_CASES = [
    ("Predict", predict_pb2.PredictRequest(), INVALID, "Missing ModelSpec"),
    ("Predict", predict_request("", x_input([1.0])), INVALID, "ModelSpec has no name specified."),
    ("Predict", predict_request("nope", x_input([1.0])), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    ("Predict", predict_request("half_plus_two", x_input([1.0]), version=999),
     grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(half_plus_two, 999)"),
    ("Predict", predict_request("two_versions", x_input([1.0]), label="nope"), INVALID,
     "Unrecognized servable version label: nope"),
    ("Predict", predict_request("half_plus_two", x_input([1.0]), signature="nope"),
     grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    ("Predict", predict_request("half_plus_two", x_input([1.0]), output_filter=["z"]), INVALID,
     "output tensor alias not found in signature: z Outputs expected to be in the set {y}."),
    ("Predict", predict_request("half_plus_two", x_input([1.0]), output_filter=["y", "y"]),
     INVALID, "duplicate output tensor alias: y"),
    ("Predict", predict_request("multi_io", {"a": tensor([[1.0, 2.0]], types_pb2.DT_FLOAT),
                                             "c": tensor([[1.0, 2.0]], types_pb2.DT_FLOAT)}),
     INVALID, "input size does not match signature: 2!=2 len({a,c}) != len({a,b}). "
     "Sent extra: {c}. Missing but required: {b}."),
    ("Predict", predict_request("half_plus_two", {"x": tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape={"dim": [{"size": 2}]}, tensor_content=b"abc")}),
     INVALID, "tensor parsing error: x"),
    ("Classify", classification_pb2.ClassificationRequest(), INVALID, "Missing ModelSpec"),
    # The Input is looked at only after the model and the signature (as in TF Serving).
    ("Classify", classification_pb2.ClassificationRequest(
        model_spec=spec("half_plus_two", "classify_x_to_y")), INVALID, "Input is empty."),
    ("Classify", classification_pb2.ClassificationRequest(model_spec=spec("nope")),
     grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    ("Regress", regression_pb2.RegressionRequest(
        model_spec=spec("half_plus_two", "regress_x_to_y")), INVALID, "Input is empty."),
    ("Classify", _classify("half_plus_two", "nope"), INVALID,
     "No signature was found with the name: nope"),
    ("Classify", _classify("nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    ("Regress", regression_pb2.RegressionRequest(model_spec=spec("half_plus_two", "nope")),
     INVALID, "No signature was found with the name: nope"),
    ("MultiInference", inference_pb2.MultiInferenceRequest(), INVALID,
     "ModelSpec has no name specified."),
    ("MultiInference", _multi(("half_plus_two", "classify_x_to_y", CLASSIFY),
                              ("tf2", "regress_x_to_y", REGRESS)),
     INVALID, "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
    ("MultiInference", _multi(("half_plus_two", "regress_x_to_y", REGRESS),
                              ("half_plus_two", "regress_x_to_y", REGRESS)),
     INVALID, "Duplicate evaluation of signature: regress_x_to_y"),
    ("MultiInference", _multi(("half_plus_two", "nope", REGRESS)), INVALID,
     "Requested signature not found in model graph: nope"),
    ("MultiInference", _multi(("half_plus_two", "serving_default", "tensorflow/serving/predict")),
     grpc.StatusCode.UNIMPLEMENTED,
     "Unsupported signature method_name: tensorflow/serving/predict"),
    ("MultiInference", _multi(("half_plus_two", "regress_x_to_y", REGRESS), examples=0),
     INVALID, "Input is empty."),
    ("MultiInference", _multi(("nope", "regress_x_to_y", REGRESS)), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(), INVALID,
     "Missing ModelSpec"),
    ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec("half_plus_two")), INVALID,
     "GetModelMetadataRequest must specify at least one metadata_field"),
    ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec("half_plus_two"), metadata_field=["signature_def", "graph"]), INVALID,
     "Metadata field graph is not supported"),
    ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec(""), metadata_field=["signature_def"]), INVALID,
     "ModelSpec has no name specified."),
    ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec("nope"), metadata_field=["signature_def"]), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
]


@pytest.mark.parametrize(("method", "request_", "code", "message"), ERROR_CASES)
def test_prediction_service_errors(prediction, method, request_, code, message) -> None:  # type: ignore[no-untyped-def]
    error = rpc_error(getattr(prediction, method), request_)
    assert (error.code(), error.details()) == (code, message)


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (get_model_status_pb2.GetModelStatusRequest(), INVALID, "Missing ModelSpec"),
        (get_model_status_pb2.GetModelStatusRequest(model_spec=spec("nope")),
         grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope"),
        (get_model_status_pb2.GetModelStatusRequest(model_spec=spec("two_versions", version=5)),
         grpc.StatusCode.NOT_FOUND, "Could not find version 5 of model two_versions"),
    ],
)
def test_model_status_errors(models, request_, code, message) -> None:  # type: ignore[no-untyped-def]
    error = rpc_error(models.GetModelStatus, request_)
    assert (error.code(), error.details()) == (code, message)


def test_predict_dtype_mismatch_is_invalid_argument(prediction) -> None:  # type: ignore[no-untyped-def]
    request = predict_request("half_plus_two", {"x": tensor([[1.0]], types_pb2.DT_DOUBLE)})
    error = rpc_error(prediction.Predict, request)
    assert error.code() == INVALID, error.details()


def test_long_error_message_is_truncated(prediction) -> None:  # type: ignore[no-untyped-def]
    name = "m" * 2000
    error = rpc_error(prediction.Predict, predict_request(name, x_input([1.0])))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    expected = f"Servable not found for request: Latest({name})"[:1024] + "...TRUNCATED"
    assert error.details() == expected


# --- transport: UNIX socket, concurrency, deadlines, health, reflection ---


def test_unix_socket(server: ServerProcess) -> None:
    with grpc.insecure_channel(f"unix:{server.socket_path}") as ch:  # type: ignore[attr-defined]
        wait_for_channel(ch, server)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        response = stub.Predict(predict_request("half_plus_two", x_input([2.0])), timeout=30)
    np.testing.assert_allclose(to_numpy(response.outputs["y"]), [[3.0]])


def test_grpc_request_latency_names_the_rpc(server: ServerProcess, prediction) -> None:  # type: ignore[no-untyped-def]
    """TF Serving's gRPC handlers label request_latency with the RPC's name ("Predict")
    and entrypoint GRPC (its REST handler uses the URL's lowercase verb)."""
    prediction.Predict(predict_request("half_plus_two", x_input([1.0])), timeout=30)
    with server.client() as http:
        text = http.get("/metrics").text
    assert any(
        line.startswith(":tensorflow:serving:request_latency_count{")
        and 'model_name="half_plus_two",API="Predict",entrypoint="GRPC"' in line
        for line in text.splitlines()
    )


def test_32_concurrent_predicts(prediction) -> None:  # type: ignore[no-untyped-def]
    futures = [
        (i, prediction.Predict.future(
            predict_request("half_plus_two", x_input([float(i), float(i) + 0.5])), timeout=60))
        for i in range(32)
    ]
    for i, future in futures:
        y = to_numpy(future.result().outputs["y"]).reshape(-1)
        np.testing.assert_allclose(y, [0.5 * i + 2, 0.5 * (i + 0.5) + 2])


def test_concurrent_clients_on_separate_channels(server: ServerProcess) -> None:
    def one_client(i: int) -> float:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            response = stub.Predict(predict_request("tf2", {"x": tensor([float(i)],
                                                                        types_pb2.DT_FLOAT)}),
                                    timeout=60)
            return float(to_numpy(response.outputs["y"])[0])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one_client, range(16))) == [0.5 * i + 2 for i in range(16)]


def test_deadline_shorter_than_model_time(prediction) -> None:  # type: ignore[no-untyped-def]
    request = predict_request("slow", x_input([1.0]))
    error = rpc_error(prediction.Predict, request, timeout=0.1)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server is unaffected; with time to spare the same request succeeds.
    response = prediction.Predict(request, timeout=30)
    np.testing.assert_allclose(to_numpy(response.outputs["y"]), [[2.5]])


def test_deadline_while_queued_behind_slow_requests(prediction) -> None:  # type: ignore[no-untyped-def]
    """Requests whose deadline passes while they wait behind slow ones are answered
    DEADLINE_EXCEEDED; the ones queued with time left still succeed."""
    request = predict_request("slow", x_input([1.0]))
    patient = [prediction.Predict.future(request, timeout=30) for _ in range(2)]
    hasty = [prediction.Predict.future(request, timeout=0.4) for _ in range(3)]
    for future in hasty:
        with pytest.raises(grpc.RpcError) as info:
            future.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for future in patient:
        np.testing.assert_allclose(to_numpy(future.result().outputs["y"]), [[2.5]])


@pytest.mark.parametrize(
    "service",
    ["", "ModelService", "PredictionService", "tensorflow.serving.PredictionService",
     "tensorflow.serving.ModelService"],
)
def test_health_serving(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    error = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def _reflect(channel: grpc.Channel, **request: Any) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10)
    return next(iter(responses))


def test_reflection(channel: grpc.Channel) -> None:
    listed = _reflect(channel, list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert names == {
        "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
        "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "tfgate.admin.AdminService",
        "inference.GRPCInferenceService",  # the Open Inference Protocol (V2)
    }
    for symbol, file_name in [
        ("tensorflow.serving.PredictionService",
         "tensorflow_serving/apis/prediction_service.proto"),
        ("tensorflow.serving.ModelService", "tensorflow_serving/apis/model_service.proto"),
        ("tensorflow.serving.PredictRequest", "tensorflow_serving/apis/predict.proto"),
        ("inference.GRPCInferenceService", "proto/open_inference.proto"),
    ]:
        found = _reflect(channel, file_containing_symbol=symbol)
        assert found.HasField("file_descriptor_response"), found
        first = descriptor_pb2.FileDescriptorProto.FromString(
            found.file_descriptor_response.file_descriptor_proto[0])
        assert first.name == file_name


def test_log_names_the_grpc_server(server: ServerProcess) -> None:
    line = "gRPC served by grpc.aio (--grpc_channel_arguments)"
    assert (line in server.log()) == (server.grpc_server == "grpcio")  # type: ignore[attr-defined]


def test_server_log_has_no_tracebacks(server: ServerProcess) -> None:
    assert "Traceback" not in server.log()
    assert "Running gRPC ModelServer at 127.0.0.1:" in server.log()
    assert "Running gRPC ModelServer at UNIX socket" in server.log()


# --- pure pieces (no server) ---


def test_parse_channel_arguments() -> None:
    assert parse_channel_arguments("") == []
    assert parse_channel_arguments(
        "grpc.max_connection_age_ms=1000, grpc.lb_policy_name=round_robin,big=99999999999"
    ) == [("grpc.max_connection_age_ms", 1000), ("grpc.lb_policy_name", "round_robin"),
          ("big", "99999999999")]
    with pytest.raises(StartupError):
        parse_channel_arguments("novalue")


def test_model_spec_from_proto() -> None:
    assert model_spec_from_proto(spec("m", "sig", version=3)) == ModelSpec("m", 3, None, "sig")
    assert model_spec_from_proto(spec("m", label="")) == ModelSpec("m", None, "", "")
    with pytest.raises(ServingError, match=r"ModelSpec has no name specified\."):
        model_spec_from_proto(spec(""))


def test_status_code_table_matches_tf_codes() -> None:
    for code in Code:
        assert GRPC_STATUS_BY_CODE[code].name == code.name


class _FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


async def test_unexpected_exception_is_logged_and_internal(caplog) -> None:  # type: ignore[no-untyped-def]
    class Servicer:
        @translated
        async def Boom(self, request: Any, context: Any) -> None:
            raise KeyError("surprise")

    context = _FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await Servicer().Boom(None, context)
    assert context.aborted == (grpc.StatusCode.INTERNAL, "KeyError: 'surprise'")
    assert "Boom failed unexpectedly" in caplog.text
    assert "Traceback" in caplog.text
