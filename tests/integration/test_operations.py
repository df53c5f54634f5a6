"""Operations: Prometheus metrics after known traffic, inference auth, REST TLS, request ids
and the JSON access log, and draining in-flight requests on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import re
import signal
import subprocess
import time

import httpx
import pytest

from tests.serverproc import ServerProcess


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("#") or not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"no sample of {name} {labels}"
    return total


def test_metrics_names_and_values_after_known_traffic(tfs_testdata, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(
        ["--model_name=hp2", f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu",
         f"--monitoring_config_file={tfs_testdata}/fixtures/monitoring_config.txt",
         "--enable_batching"],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            for _ in range(3):
                assert http.post("/v1/models/hp2:predict", json={"instances": [[1.0], [2.0]]}).status_code == 200
            assert http.post("/v1/models/hp2:predict", json={"instances": ["x"]}).status_code == 400
            regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
            assert http.post("/v1/models/hp2:regress", json=regress).status_code == 200
            response = http.get("/monitoring/prometheus/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            text = response.text
            assert http.get("/metrics").status_code == 200
    finally:
        server.stop()
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert metric_value(text, ":tensorflow:serving:request_count", model_name="hp2", status="OK") == 4
    assert metric_value(
        text, ":tensorflow:serving:request_count", model_name="hp2", status="INVALID_ARGUMENT"
    ) == 1
    assert metric_value(
        text, ":tensorflow:serving:request_latency_count", model_name="hp2", API="predict",
        entrypoint="REST",
    ) == 3
    assert metric_value(
        text, ":tensorflow:serving:request_latency_count", model_name="hp2", API="regress",
    ) == 1
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    assert metric_value(text, ":tensorflow:serving:runtime_latency_count", model_name="hp2") == 4
    # TF Serving's API label per call type, REST included (predict_util.cc, regressor.cc)
    assert metric_value(
        text, ":tensorflow:serving:runtime_latency_count", model_name="hp2", API="Predict",
        runtime="TF1",
    ) == 3
    assert metric_value(
        text, ":tensorflow:serving:runtime_latency_count", model_name="hp2", API="Regress",
    ) == 1
    assert metric_value(text, ":tensorflow:serving:batching_session:input_batch_size_count") == 4
    assert metric_value(text, ":tensorflow:serving:batching_session:input_batch_size_sum") == 8
    assert metric_value(text, "tfgate_model_version_state", model_name="hp2", version="123") == 30
    # Only MultiInference records example counts (TF Serving's Classify and Regress stopped
    # in 2020): the regress above leaves none.
    assert "# TYPE :tensorflow:serving:request_example_counts histogram" in text
    assert ":tensorflow:serving:request_example_counts_count{" not in text
    assert ":tensorflow:serving:request_example_count_total{" not in text
    # TF's SavedModel loader counts each attempt under the version directory
    assert metric_value(
        text, ":tensorflow:cc:saved_model:load_attempt_count",
        model_path=f"{tfs_testdata}/saved_model_half_plus_two_cpu/00000123", status="success",
    ) == 1
    # queue waits are microseconds, not whole milliseconds of the event loop's clock
    assert metric_value(text, ":tensorflow:serving:batching_session:queuing_latency_sum") > 0
    assert re.search(r'_bucket\{[^}]*le="\+Inf"\}', text)
    # each live worker's resident memory (a worker with TensorFlow and a model is > 50 MB)
    assert metric_value(text, "tfgate_worker_resident_memory_bytes", worker="0") > 50e6


def test_metrics_path_only_when_monitoring_enabled(tfs_testdata, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(
        ["--model_name=hp2", f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu"],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            assert http.get("/monitoring/prometheus/metrics").status_code == 404
            assert http.get("/metrics").status_code == 200
    finally:
        server.stop()


@pytest.fixture(scope="module")
def auth_server(tfs_testdata, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("auth")
    keys = tmp / "api_keys"
    keys.write_text("# key models\nk-all *\nk-hp2 hp2\nk-other other,third\n")
    config = tmp / "tfgate.toml"
    config.write_text(f'[auth]\napi_keys_file = "{keys}"\n')
    server = ServerProcess(
        ["--model_name=hp2", f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu",
         f"--config={config}"],
        tmp / "s.log",
    ).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "Missing API key"),
        ({"Authorization": "Bearer nope"}, 403, "Invalid API key"),
        ({"Authorization": "Bearer k-other"}, 403, "API key is not allowed to use model hp2"),
        ({"Authorization": "Bearer k-hp2"}, 200, None),
        ({"x-api-key": "k-all"}, 200, None),
        ({"Authorization": "Basic k-all"}, 401, "Missing API key"),
    ],
)
def test_inference_auth_rest(auth_server, headers, status, error) -> None:  # type: ignore[no-untyped-def]
    with auth_server.client() as http:
        response = http.post("/v1/models/hp2:predict", json={"instances": [1.0]}, headers=headers)
        assert response.status_code == status
        if error:
            assert response.json() == {"error": error}
        assert http.get("/v1/models/hp2", headers=headers).status_code == status
        assert http.get("/healthz").status_code == 200  # health stays open
    assert "k-hp2" not in auth_server.log() and "k-all" not in auth_server.log()


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "Missing API key"),
        ({"Authorization": "Bearer k-other"}, 403, "API key is not allowed to use model hp2"),
        ({"Authorization": "Bearer k-hp2"}, 200, None),
    ],
)
def test_inference_auth_v2(auth_server, headers, status, error) -> None:  # type: ignore[no-untyped-def]
    """The Open Inference Protocol (V2) checks the same keys, on REST and gRPC."""
    import grpc

    from proto import open_inference_pb2, open_inference_pb2_grpc

    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
    with auth_server.client() as http:
        response = http.post("/v2/models/hp2/infer", json=body, headers=headers)
        assert response.status_code == status
        if error:
            assert response.json() == {"error": error}
        assert http.get("/v2/models/hp2", headers=headers).status_code == status
        assert http.get("/v2/health/live").status_code == 200  # health stays open
    request = open_inference_pb2.ModelInferRequest(model_name="hp2")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    tensor.contents.fp32_contents.append(1.0)
    metadata = [(k.lower(), v) for k, v in headers.items()]
    with grpc.insecure_channel(f"127.0.0.1:{auth_server.grpc_port}") as channel:
        stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        if error is None:
            stub.ModelInfer(request, metadata=metadata, timeout=30)
        else:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata, timeout=30)
            expected = (
                grpc.StatusCode.UNAUTHENTICATED if status == 401
                else grpc.StatusCode.PERMISSION_DENIED
            )
            assert info.value.code() == expected and info.value.details() == error


def test_rest_tls(tfs_testdata, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server = ServerProcess(
        ["--model_name=hp2", f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu",
         f"--rest_api_ssl_cert_file={cert}", f"--rest_api_ssl_key_file={key}"],
        tmp_path / "s.log",
    ).start()
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{server.rest_port}", verify=str(cert)) as http:
            response = http.post("/v1/models/hp2:predict", json={"instances": [2.0]})
            assert response.json() == {"predictions": [3.0]}
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.rest_port}/healthz", timeout=5)
    finally:
        server.stop()


def test_request_id_and_json_access_log(tfs_testdata, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(
        ["--model_name=hp2", f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu",
         "--access_log", "--log_format=json"],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            given = http.post("/v1/models/hp2:predict", json={"instances": [1234.5]},
                              headers={"X-Request-Id": "req-42"})
            assert given.headers["x-request-id"] == "req-42"
            generated = http.post("/v1/models/hp2:predict", json={"instances": [1.0]})
            assert re.fullmatch(r"[0-9a-f]{16}", generated.headers["x-request-id"])
            bad = http.get("/v1/models/hp2", headers={"X-Request-Id": "x" * 500})
            assert len(bad.headers["x-request-id"]) == 16
    finally:
        server.stop()
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "tfgate.access"]
    mine = next(e for e in access if e.get("request_id") == "req-42")
    assert mine["status"] == 200 and mine["method"] == "POST"
    assert mine["path"] == "/v1/models/hp2:predict" and mine["latency_ms"] > 0
    assert "1234.5" not in server.log()  # no payloads in logs


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(model_zoo, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    base = model_zoo.base_path("slow")
    server = ServerProcess(["--model_name=slow", f"--model_base_path={base}"], tmp_path / "s.log")
    server.start()

    def call() -> int:
        with httpx.Client(timeout=60) as http:
            return http.post(f"{server.rest_url}/v1/models/slow:predict",
                             json={"instances": [[1.0]]}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call) for _ in range(8)]
        time.sleep(0.5)  # all eight are in flight (the model takes 300 ms each, serially)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        statuses = [f.result() for f in futures]
    assert statuses == [200] * 8
    assert server.wait_exit(60) == 0
    server.stop()


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), "UNAUTHENTICATED"),
        ((("authorization", "Bearer nope"),), "PERMISSION_DENIED"),
        ((("authorization", "Bearer k-other"),), "PERMISSION_DENIED"),
        ((("authorization", "Bearer k-hp2"),), "OK"),
        ((("x-api-key", "k-all"),), "OK"),
    ],
)
def test_inference_auth_grpc(auth_server, metadata, code) -> None:  # type: ignore[no-untyped-def]
    import grpc

    from app.core.protos import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hp2"
    request.inputs["x"].dtype = 1
    request.inputs["x"].tensor_shape.dim.add().size = 1
    request.inputs["x"].float_val.append(2.0)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "hp2"
    with grpc.insecure_channel(f"127.0.0.1:{auth_server.grpc_port}") as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
        for call, message in ((predict, request), (status, status_request)):
            try:
                call(message, metadata=metadata, timeout=30)
                outcome = "OK"
            except grpc.RpcError as exc:
                outcome = exc.code().name
            assert outcome == code


def test_grpc_reload_config_needs_an_admin_token_once_auth_is_on(auth_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With inference keys configured, HandleReloadConfigRequest replaces the model list only
    for an admin token (this server has none, so the admin API is off): an inference key,
    even one for every model, cannot point a model at another directory."""
    import grpc

    from app.core.protos import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    entry = request.config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = "hp2", str(tmp_path), "tensorflow"
    with grpc.insecure_channel(f"127.0.0.1:{auth_server.grpc_port}") as channel:
        reload = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest
        for metadata in ((), (("authorization", "Bearer k-all"),)):
            with pytest.raises(grpc.RpcError) as info:
                reload(request, metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "The admin API is disabled" in (info.value.details() or "")
    with auth_server.client() as http:
        response = http.post("/v1/models/hp2:predict", json={"instances": [2.0]},
                             headers={"Authorization": "Bearer k-all"})
        assert response.json() == {"predictions": [3.0]}
