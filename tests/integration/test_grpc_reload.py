"""ModelService.HandleReloadConfigRequest: the request's ModelServerConfig replaces the
served model list (new models load before the reply, dropped ones unload), with TF
Serving's validation errors. The server has its own process since reloads change it."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from app.core.protos import (
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tests.integration.test_grpc import (
    model_entry,
    predict_request,
    to_numpy,
    wait_for_channel,
    x_input,
)
from tests.integration.test_warmup import WRITE_WARMUP
from tests.serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(tfs_testdata, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("grpc_reload")
    config = tmp / "models.config"
    config.write_text("model_config_list {\n" + model_entry(
        "half_plus_two", tfs_testdata / "saved_model_half_plus_two_cpu") + "\n}\n")
    proc = ServerProcess(
        [f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
         "--max_num_load_retries=0"],
        tmp / "server.log",
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        wait_for_channel(ch, server)
        yield ch


def reload_request(*entries: str) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    text = "model_config_list {\n" + "\n".join(entries) + "\n}\n"
    text_format.Parse(text, request.config)
    return request


def versions(channel: grpc.Channel, name: str) -> list[tuple[int, int]]:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    response = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name=name)), timeout=10)
    return [(s.version, s.state) for s in response.model_version_status]


def predict(channel: grpc.Channel, name: str, x: float) -> np.ndarray:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(predict_request(name, x_input([x])), timeout=30)
    return to_numpy(response.outputs["y"])


def test_reload_adds_and_removes_models(channel: grpc.Channel, tfs_testdata: pathlib.Path) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    half_plus_two = model_entry("half_plus_two", tfs_testdata / "saved_model_half_plus_two_cpu")
    half_plus_three = model_entry("half_plus_three", tfs_testdata / "saved_model_half_plus_three")

    response = stub.HandleReloadConfigRequest(
        reload_request(half_plus_two, half_plus_three), timeout=120)
    assert response.status.error_code == 0 and not response.status.error_message
    # The reply comes once the new model is AVAILABLE.
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert versions(channel, "half_plus_three") == [(123, available)]
    np.testing.assert_allclose(predict(channel, "half_plus_three", 2.0), [[4.0]])
    np.testing.assert_allclose(predict(channel, "half_plus_two", 2.0), [[3.0]])

    response = stub.HandleReloadConfigRequest(reload_request(half_plus_three), timeout=120)
    assert response.status.error_code == 0
    deadline = time.monotonic() + 30
    while True:  # the dropped model unloads after the reply
        try:
            predict(channel, "half_plus_two", 2.0)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            assert exc.details() == "Servable not found for request: Latest(half_plus_two)"
            break
        assert time.monotonic() < deadline, "half_plus_two was not unloaded"
        time.sleep(0.2)
    np.testing.assert_allclose(predict(channel, "half_plus_three", 2.0), [[4.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('custom_model_config { type_url: "x" }',
         "ServerModelConfig type not supported by HandleReloadConfigRequest. "
         "Only ModelConfigList is currently supported"),
        ("", "ServerModelConfig type not supported by HandleReloadConfigRequest. "
         "Only ModelConfigList is currently supported"),
        ('model_config_list { config { name: "m" base_path: "relative/path" '
         'model_platform: "tensorflow" } }',
         "Expected model m to have an absolute path or URI; got base_path()=relative/path"),
        ('model_config_list { config { name: "m" base_path: "/a" model_platform: "tensorflow" } '
         'config { name: "m" base_path: "/b" model_platform: "tensorflow" } }',
         "Illegal to list model m multiple times in config list"),
    ],
)
def test_reload_rejects_bad_configs(channel: grpc.Channel, text: str, message: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(request, timeout=30)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, message)


def test_reload_with_a_model_that_fails_to_load(
    channel: grpc.Channel, tfs_testdata: pathlib.Path
) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    half_plus_three = model_entry("half_plus_three", tfs_testdata / "saved_model_half_plus_three")
    bad = model_entry("bad", tfs_testdata / "bad_half_plus_two")
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(reload_request(half_plus_three, bad), timeout=120)
    # ServerCore::ReloadConfig's own code and text for a model that did not load.
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details().startswith(
        "1 servable(s) did not become available: {{name: bad version: 123} due to error: ")
    # The models that loaded keep serving.
    np.testing.assert_allclose(predict(channel, "half_plus_three", 2.0), [[4.0]])


def test_reload_rejects_a_label_on_a_version_that_is_not_available(
    channel: grpc.Channel, tfs_testdata: pathlib.Path
) -> None:
    """ServerCore updates the label map before it loads anything: a label must point at an
    AVAILABLE version (no --allow_version_labels_for_unavailable_models here), and a
    rejected reload changes nothing."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    path = tfs_testdata / "saved_model_half_plus_three"
    plain = model_entry("half_plus_three", path)
    assert stub.HandleReloadConfigRequest(reload_request(plain), timeout=120).status.error_code == 0
    half_plus_two = model_entry("half_plus_two", tfs_testdata / "saved_model_half_plus_two_cpu")
    typo = model_entry("half_plus_three", path, 'version_labels { key: "stable" value: 999 }')
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(reload_request(typo, half_plus_two), timeout=30)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "Request to assign label to version 999 of model half_plus_three, which is not "
        "currently available for inference",
    )
    with pytest.raises(grpc.RpcError) as missing:  # half_plus_two was not added
        versions(channel, "half_plus_two")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # A label on the version that is AVAILABLE is applied.
    stable = model_entry("half_plus_three", path, 'version_labels { key: "stable" value: 123 }')
    assert stub.HandleReloadConfigRequest(reload_request(stable), timeout=120).status.error_code == 0
    stub_p = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub_p.Predict(
        predict_request("half_plus_three", x_input([2.0]), label="stable"), timeout=30
    )
    assert response.model_spec.version.value == 123


def test_model_dropped_by_an_empty_config_can_be_added_again(
    channel: grpc.Channel, tfs_testdata: pathlib.Path
) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    half_plus_three = model_entry("half_plus_three", tfs_testdata / "saved_model_half_plus_three")
    assert stub.HandleReloadConfigRequest(
        reload_request(half_plus_three), timeout=120).status.error_code == 0
    assert stub.HandleReloadConfigRequest(reload_request(), timeout=30).status.error_code == 0
    deadline = time.monotonic() + 30
    while True:  # unloaded and forgotten after the reply
        try:
            versions(channel, "half_plus_three")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            break
        assert time.monotonic() < deadline, "half_plus_three was not dropped"
        time.sleep(0.2)
    response = stub.HandleReloadConfigRequest(reload_request(half_plus_three), timeout=60)
    assert response.status.error_code == 0
    np.testing.assert_allclose(predict(channel, "half_plus_three", 2.0), [[4.0]])


def test_reload_reports_increases_of_the_requested_counters(
    channel: grpc.Channel, tfs_testdata: pathlib.Path
) -> None:
    """ReloadConfigRequest.metric_names: one entry per name, the counter's increase over
    the reload (a name that is no counter reports 0)."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    half_plus_three = model_entry("half_plus_three", tfs_testdata / "saved_model_half_plus_three")
    assert stub.HandleReloadConfigRequest(reload_request(), timeout=30).status.error_code == 0
    request = reload_request(half_plus_three)
    loads = ":tensorflow:cc:saved_model:load_attempt_count"
    request.metric_names.extend([loads, "no_such_counter", loads])
    deadline = time.monotonic() + 30
    while True:  # the empty config above drops the model once it has unloaded
        try:
            versions(channel, "half_plus_three")
        except grpc.RpcError:
            break
        assert time.monotonic() < deadline, "half_plus_three was not dropped"
        time.sleep(0.2)
    response = stub.HandleReloadConfigRequest(request, timeout=120)
    assert response.status.error_code == 0
    increases = [(m.name, m.int64_value_increase) for m in response.metric]
    assert increases == [(loads, 1), ("no_such_counter", 0)]


def test_reload_rejects_platform_changes_and_other_platforms(
    channel: grpc.Channel, tfs_testdata: pathlib.Path
) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    path = tfs_testdata / "saved_model_half_plus_three"
    half_plus_three = model_entry("half_plus_three", path)
    assert stub.HandleReloadConfigRequest(
        reload_request(half_plus_three), timeout=120).status.error_code == 0
    cases = [
        ([f'config {{ name: "half_plus_three" base_path: "{path}" '
          'model_platform: "tensorflow_lite" }'],
         "Illegal to change a model's platform. For model half_plus_three platform was "
         "tensorflow and new platform requested is tensorflow_lite"),
        ([half_plus_three,
          'config { name: "other" base_path: "/x" model_platform: "tensorflow_lite" }'],
         "Model other: model_platform 'tensorflow_lite' is not supported (only tensorflow)"),
        ([half_plus_three, 'config { name: "other" base_path: "/x" }'],
         "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
         "ModelServerConfig::model_platform."),
    ]
    for entries, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.HandleReloadConfigRequest(reload_request(*entries), timeout=30)
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, message)
    np.testing.assert_allclose(predict(channel, "half_plus_three", 2.0), [[4.0]])


def test_a_reload_waiting_for_a_model_without_versions_does_not_block_the_next(
    channel: grpc.Channel, tfs_testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """As in TF Serving, a reload adding a model with no version yet waits for one (here with
    no deadline at all); unlike a lock held for the wait, the next reload still applies, and
    once it removes the awaited model the first call ends with ABORTED."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    half_plus_two = model_entry("half_plus_two", tfs_testdata / "saved_model_half_plus_two_cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    waiting = stub.HandleReloadConfigRequest.future(
        reload_request(half_plus_two, model_entry("empty", empty))
    )
    try:
        time.sleep(1.0)
        assert not waiting.done()
        started = time.monotonic()
        reply = stub.HandleReloadConfigRequest(reload_request(half_plus_two), timeout=20)
        assert reply.status.error_code == 0
        assert time.monotonic() - started < 10
        error = waiting.exception(timeout=20)
        assert error is not None and error.code() == grpc.StatusCode.ABORTED
        assert "empty were removed by a later config reload" in error.details()
    finally:
        waiting.cancel()


def test_a_reload_repeating_a_config_waits_for_the_model_an_earlier_one_awaits(
    channel: grpc.Channel, tfs_testdata: pathlib.Path, tmp_path: pathlib.Path, model_zoo
) -> None:  # type: ignore[no-untyped-def]
    """TF Serving's reloads hold its config lock while they wait, so the second of two
    identical reloads cannot answer before the model the first one added is AVAILABLE."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    half_plus_two = model_entry("half_plus_two", tfs_testdata / "saved_model_half_plus_two_cpu")
    slow = tmp_path / "slow"
    shutil.copytree(model_zoo.base_path("slow") / "1", slow / "1")
    (slow / "1" / "assets.extra").mkdir()
    subprocess.run(  # 12 warmup records through a 300 ms model: >= 3.6 s of load
        [sys.executable, "-c", WRITE_WARMUP,
         str(slow / "1" / "assets.extra" / "tf_serving_warmup_requests"), "12"],
        check=True,
    )
    config = reload_request(half_plus_two, model_entry("slow", slow))
    first = stub.HandleReloadConfigRequest.future(config, timeout=60)
    try:
        time.sleep(0.5)
        assert stub.HandleReloadConfigRequest(config, timeout=60).status.error_code == 0
        assert not first.done() or first.result().status.error_code == 0
        assert versions(channel, "slow") == [(1, 30)]  # AVAILABLE
        assert first.result(timeout=60).status.error_code == 0
    finally:
        first.cancel()
        stub.HandleReloadConfigRequest(reload_request(half_plus_two), timeout=60)
