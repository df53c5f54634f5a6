"""gRPC server flags that need a server of their own: --port=0 with --grpc_socket_path (UNIX
socket only), --enable_serialization_as_tensor_content, --grpc_max_threads as a limit on
concurrent RPCs, and the health service left off (its default)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.core.protos import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    types_pb2,
)
from tests.integration.test_grpc import (
    model_entry,
    predict_request,
    tensor,
    to_numpy,
    wait_for_channel,
    x_input,
)
from tests.serverproc import ServerProcess, port_open

MAX_THREADS = 2


# Both gRPC servers: grpc.aio and tfgate's HTTP/2 one (the default), which implements the
# concurrent-call limit, the UNIX socket and tensor_content replies on its own.
@pytest.fixture(scope="module", params=["grpcio", "h2"])
def server(request, tfs_testdata, model_zoo, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("grpc_options")
    entries = [model_entry("half_plus_two", tfs_testdata / "saved_model_half_plus_two_cpu")]
    entries += [model_entry(name, model_zoo.base_path(name)) for name in
                ("int_ops", "strings", "bools", "slow")]
    config = tmp / "models.config"
    config.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    proc = ServerProcess(
        [
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=0",
            "--port=0",  # after ServerProcess's own --port: TCP gRPC off
            f"--grpc_socket_path={tmp / 'grpc.sock'}",
            "--enable_serialization_as_tensor_content",
            f"--grpc_max_threads={MAX_THREADS}",
            f"--grpc_implementation={request.param}",
        ],
        tmp / "server.log",
    )
    proc.socket_path = tmp / "grpc.sock"  # type: ignore[attr-defined]
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix:{server.socket_path}") as ch:  # type: ignore[attr-defined]
        wait_for_channel(ch, server)
        yield ch


@pytest.fixture(scope="module")
def prediction(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_port_zero_disables_tcp(server: ServerProcess, channel: grpc.Channel) -> None:
    assert not port_open(server.grpc_port)
    assert "Running gRPC ModelServer at UNIX socket" in server.log()


def test_outputs_as_tensor_content(prediction) -> None:  # type: ignore[no-untyped-def]
    response = prediction.Predict(
        predict_request("half_plus_two", x_input([1.0, 2.0])), timeout=30)
    y = response.outputs["y"]
    assert not y.float_val
    assert y.tensor_content == np.array([2.5, 3.0], "<f4").tobytes()
    assert [d.size for d in y.tensor_shape.dim] == [2, 1]


def test_int_and_bool_outputs_as_tensor_content(prediction) -> None:  # type: ignore[no-untyped-def]
    inputs = {"i32": tensor([1, 2], types_pb2.DT_INT32),
              "i64": tensor([2**40, 7], types_pb2.DT_INT64)}
    response = prediction.Predict(predict_request("int_ops", inputs), timeout=30)
    assert not response.outputs["out64"].int64_val
    np.testing.assert_array_equal(to_numpy(response.outputs["out32"]), [2, 4])
    np.testing.assert_array_equal(to_numpy(response.outputs["out64"]), [2**40 + 1, 8])
    flags = prediction.Predict(
        predict_request("bools", {"flag": tensor([True, False], types_pb2.DT_BOOL)}),
        timeout=30)
    assert flags.outputs["not_flag"].tensor_content == b"\x00\x01"


def test_string_outputs_stay_in_string_val(prediction) -> None:  # type: ignore[no-untyped-def]
    """TF has no tensor_content encoding for DT_STRING (AsProtoTensorContent uses string_val)."""
    response = prediction.Predict(
        predict_request("strings", {"s": tensor([b"ab"], types_pb2.DT_STRING)}), timeout=30)
    assert list(response.outputs["upper"].string_val) == [b"AB"]
    np.testing.assert_array_equal(to_numpy(response.outputs["length"]), [2])


def test_max_threads_limits_concurrent_rpcs(prediction) -> None:  # type: ignore[no-untyped-def]
    """Like a TF Serving server out of gRPC threads: RPCs over the limit are refused with
    RESOURCE_EXHAUSTED at once; those admitted complete."""
    request = predict_request("slow", x_input([1.0]))
    futures = [prediction.Predict.future(request, timeout=30) for _ in range(MAX_THREADS + 3)]
    codes = []
    for future in futures:
        try:
            np.testing.assert_allclose(to_numpy(future.result().outputs["y"]), [[2.5]])
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert codes.count(grpc.StatusCode.OK) >= 1
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # Once the admitted RPCs are done, new ones are accepted again.
    assert prediction.Predict(predict_request("half_plus_two", x_input([2.0])), timeout=30)


def test_health_service_off_by_default(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_model_service_over_unix_socket(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    response = stub.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name="half_plus_two")), timeout=10)
    assert [s.version for s in response.model_version_status] == [123]
