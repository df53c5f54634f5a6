"""Issue 19's bounds as pure functions: tensor bytes charged from declared shapes before
anything is built (codec), version digits, the request-tensor limit and the connection caps
(settings, main), and metric labels a client cannot choose (metrics)."""

from __future__ import annotations

import resource
from types import SimpleNamespace

import numpy as np
import pytest

from app import main
from app.codec import example as codec_example
from app.codec import tensor_json as codec
from app.codec.tensor import TensorBudget, request_budget, tensor_nbytes
from app.codec.tensor_proto import tensor_proto_to_ndarray
from app.core.errors import Code, ServingError
from app.core.protos import example_pb2, input_pb2, tensor_pb2
from app.core.state_events import StateEventBus
from app.core.types import DT_DOUBLE, DT_FLOAT, DT_INT8, DT_STRING, SignatureSpec, TensorSpec
from app.ops import metrics
from app.rest import api as rest
from app.settings.settings import load_settings, request_tensor_limit_bytes


def signature(**dtypes: int) -> SignatureSpec:
    inputs = {name: TensorSpec(name, f"{name}:0", dtype, None) for name, dtype in dtypes.items()}
    return SignatureSpec("serving_default", "tensorflow/serving/predict", inputs, {}, frozenset())


def proto(dtype: int, shape: list[int], **values: list) -> tensor_pb2.TensorProto:
    tp = tensor_pb2.TensorProto(dtype=dtype, **values)
    for size in shape:
        tp.tensor_shape.dim.add(size=size)
    return tp


def invalid(call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ServingError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == Code.INVALID_ARGUMENT
    return caught.value.message


# --- TensorBudget ---------------------------------------------------------------------------


def test_tensor_nbytes_uses_python_ints() -> None:
    assert tensor_nbytes([1 << 32, 1 << 32], DT_FLOAT) == 4 << 64
    assert tensor_nbytes([3, 5], DT_INT8) == 15
    assert tensor_nbytes([10], DT_STRING) == 80
    assert tensor_nbytes([], DT_DOUBLE) == 8


def test_budget_is_shared_by_a_request_s_tensors() -> None:
    budget = TensorBudget(100)
    budget.charge("a", [10], DT_FLOAT)
    budget.charge("b", [15], DT_FLOAT)
    message = invalid(budget.charge, "c", [1], DT_FLOAT)
    assert message == "c: shape [1] of float needs 4 bytes; a request's tensors may take at most 100 bytes"


# --- gRPC TensorProto -------------------------------------------------------------------------


def test_broadcast_past_the_budget_is_refused_before_allocation() -> None:
    tp = proto(DT_FLOAT, [1 << 40], float_val=[1.0])
    message = invalid(tensor_proto_to_ndarray, tp, alias="x", budget=TensorBudget(64 << 20))
    assert message.startswith("tensor parsing error: x: shape [1099511627776] of float needs")


def test_broadcast_within_the_budget_still_fills() -> None:
    tp = proto(DT_FLOAT, [4], float_val=[1.0, 2.0])
    out = tensor_proto_to_ndarray(tp, alias="x", budget=TensorBudget(16))
    assert out.tolist() == [1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("shape", [[1 << 32, 1 << 32], [2**62, 4], [-1, 3]])
def test_shape_past_int64_or_negative_is_tf_serving_s_parse_error(shape: list[int]) -> None:
    tp = proto(DT_FLOAT, shape, float_val=[1.0])
    assert invalid(tensor_proto_to_ndarray, tp, alias="x", budget=None) == "tensor parsing error: x"


def test_string_broadcast_counts_the_repeated_bytes() -> None:
    tp = proto(DT_STRING, [1000], string_val=[b"y" * 100])
    budget = TensorBudget(50_000)
    message = invalid(tensor_proto_to_ndarray, tp, alias="s", budget=budget)
    assert "needs 108000 bytes" in message


# --- REST JSON --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [' + b",".join([b"[1.5, 2.5]"] * 2000) + b"]}",  # dense path
        b'{"instances": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16], [17, 18]]}',
        b'{"inputs": {"x": [[1.0, 2.0, 3.0]]}}',  # exact walk (small)
    ],
)
def test_rest_tensors_are_charged_from_their_shape(body: bytes) -> None:
    parsed = codec.parse_predict_json(body)
    message = invalid(codec.decode_predict_inputs, parsed, signature(x=DT_FLOAT), TensorBudget(8))
    assert message.startswith("Input tensor x: shape [")
    assert "at most 8 bytes" in message
    parsed = codec.parse_predict_json(body)
    assert codec.decode_predict_inputs(parsed, signature(x=DT_DOUBLE), TensorBudget(1 << 20))


def test_rest_decoding_without_a_budget_is_unchanged() -> None:
    parsed = codec.parse_predict_json(b'{"instances": [[1.0], [2.0]]}')
    out = codec.decode_predict_inputs(parsed, signature(x=DT_FLOAT))
    np.testing.assert_array_equal(out["x"], np.array([[1.0], [2.0]], dtype=np.float32))


# --- tf.Example inputs ------------------------------------------------------------------------


def test_context_repeated_per_example_is_charged_before_it_is_copied() -> None:
    request_input = input_pb2.Input()
    listed = request_input.example_list_with_context
    listed.context.features.feature["pad"].bytes_list.value.append(b"p" * 1000)
    listed.examples.extend([example_pb2.Example()] * 1000)
    message = invalid(codec_example.examples_from_input_proto, request_input, TensorBudget(100_000))
    assert message.startswith("Input examples: shape [1000] of string needs")
    body = b'{"context": {"pad": "' + b"p" * 1000 + b'"}, "examples": [' + b",".join([b"{}"] * 1000) + b"]}"
    message = invalid(codec_example.parse_examples_json, body, "classify", TensorBudget(100_000))
    assert "at most 100000 bytes" in message


# --- REST versions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [("0", 0), ("123", 123), ("0" * 5000 + "7", 7), (str(2**63 - 1), 2**63 - 1)],
)
def test_version_of_any_length_parses(text: str, version: int) -> None:
    assert rest.parse_version(text) == version


@pytest.mark.parametrize("text", [str(2**63), "9" * 20, "9" * 5000])
def test_version_past_int64_is_tf_serving_s_400(text: str) -> None:
    assert invalid(rest.parse_version, text) == f"Failed to convert version: {text} to numeric."


# --- settings and startup ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "limit"),
    [
        ([], 64 << 20),
        (["--max_request_tensor_bytes=1000"], 1000),
        (["--max_request_tensor_bytes=999999999999"], 64 << 20),
        (["--worker_arena_bytes=1000"], 1000),
    ],
)
def test_request_tensor_limit_is_capped_by_the_arena(flags: list[str], limit: int) -> None:
    settings = load_settings(["--model_base_path=/m", *flags])
    assert request_tensor_limit_bytes(settings) == limit


@pytest.mark.parametrize(
    "flag",
    [
        "--grpc_max_connections=0",
        "--rest_max_connections=-1",
        "--rest_header_timeout_seconds=0",
        "--rest_body_timeout_seconds=-1",
        "--grpc_handshake_timeout_seconds=0",
        "--grpc_idle_timeout_seconds=-1",
        "--max_request_tensor_bytes=-1",
    ],
)
def test_bad_limit_flags_are_refused(flag: str) -> None:
    from app.settings.settings import SettingsError

    with pytest.raises(SettingsError, match=flag.split("=")[0]):
        load_settings(["--model_base_path=/m", flag])


def test_connection_caps_are_fitted_to_the_fd_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1280, 1280))
    settings = load_settings(["--model_base_path=/m"])
    main.fit_connection_caps(settings)
    assert settings.rest_max_connections + settings.grpc_max_connections <= 1280 - 256
    assert settings.rest_max_connections == settings.grpc_max_connections == 512


def test_connection_caps_that_fit_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (100_000, 100_000))
    settings = load_settings(["--model_base_path=/m", "--rest_max_connections=7"])
    main.fit_connection_caps(settings)
    assert (settings.rest_max_connections, settings.grpc_max_connections) == (7, 4096)


# --- metrics ------------------------------------------------------------------------------------


def test_request_metrics_label_only_configured_models() -> None:
    registry = SimpleNamespace(configured=lambda name: object() if name == "m" else None)
    service = SimpleNamespace(
        registry=registry, observers=[], runtime_observers=[], example_observers=[]
    )
    hooks = SimpleNamespace(
        observers=[], on_run=[], on_warmup=[], on_restart=[], load_observers=[],
        rss_by_worker=lambda: [], events=StateEventBus(),
    )
    registry_metrics = metrics.Metrics()
    metrics.connect(registry_metrics, service, hooks, hooks, hooks)  # type: ignore[arg-type]
    (on_request,) = service.observers
    ok = SimpleNamespace(name="OK")
    missing = SimpleNamespace(name="NOT_FOUND")
    rest_entry = SimpleNamespace(value="REST")
    on_request("m", "predict", rest_entry, ok, 0.001)
    for index in range(300):
        on_request(f"nosuch{index}", "predict", rest_entry, missing, 0.001)
    on_request("\udcff", "predict", rest_entry, missing, 0.001)
    assert set(registry_metrics.request_count.values) == {
        ("m", "OK"),
        (metrics.UNKNOWN_MODEL_LABEL, "NOT_FOUND"),
    }
    (on_examples,) = service.example_observers
    on_examples("\udcff", 3)
    assert registry_metrics.request_example_count_total.values == {
        (metrics.UNKNOWN_MODEL_LABEL,): 3.0
    }


def test_render_never_fails_on_label_bytes() -> None:
    registry_metrics = metrics.Metrics()
    registry_metrics.request_count.inc("\udcff", "OK")
    assert b"\\udcff" in registry_metrics.render()


# --- digits in a JSON number --------------------------------------------------------------------


@pytest.mark.parametrize("digits", [b"9" * 5000, b"-" + b"9" * 5000])
def test_json_integer_of_5000_digits_is_rapidjson_s_parse_error(digits: bytes) -> None:
    """Past 64 bits rapidjson reads an integer as a double; this one overflows it. Python's
    int() would refuse the text (4300-digit limit) with a ValueError, a 500."""
    body = b'{"instances": [' + digits + b"]}"
    message = invalid(codec.parse_predict_json, body)
    assert message == "JSON Parse error: Number too big to be stored in double. at offset: 15"
    example_body = b'{"examples": [{"a": ' + digits + b"}]}"
    assert "Number too big" in invalid(codec_example.parse_examples_json, example_body, "classify")


def test_admin_version_of_5000_digits_is_400() -> None:
    from app.rest.admin_routes import _version_from_path

    assert _version_from_path("0" * 5000 + "12") == 12
    message = invalid(_version_from_path, "9" * 5000)
    assert message.startswith("Version must be a non-negative integer, got '9999")
    assert len(message) < 120


def test_dense_path_that_declines_does_not_charge_twice() -> None:
    """Two named inputs, the second not a float: the dense reader gives up after charging the
    first; the orjson path then charges both once (8000 + 2000 bytes: exactly the budget)."""
    body = b'{"inputs": {"a": [' + b", ".join([b"1.5"] * 2000) + b'], "b": [' + b", ".join([b"2"] * 2000) + b"]}}"
    parsed = codec.parse_predict_json(body)
    assert parsed.dense is not None
    sig = signature(a=DT_FLOAT, b=DT_INT8)
    out = codec.decode_predict_inputs(parsed, sig, TensorBudget(2000 * 4 + 2000 * 1))
    assert out["a"].shape == (2000,) and out["b"].dtype == np.int8


def test_request_budget_bounds_each_request_afresh_and_zero_bounds_nothing() -> None:
    from app.core.errors import ServingError
    from app.core.types import DT_FLOAT

    first = request_budget(64)
    first.charge("x", [16], DT_FLOAT)  # exactly 64 bytes
    with pytest.raises(ServingError, match="may take at most 64 bytes"):
        first.charge("y", [1], DT_FLOAT)
    request_budget(64).charge("x", [16], DT_FLOAT)  # a new request starts from zero
    request_budget(0).charge("x", [1 << 40], DT_FLOAT)  # 0: unbounded (unit tests)
