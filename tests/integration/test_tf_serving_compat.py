"""Places where tfgate used to differ from TF Serving, each against a real server on models
the tests export themselves (no ../shared needed): MultiInference on TF2 exports, the
metrics each API records, the metrics page's bytes, the metrics paths, and exit status 255.
"""

from __future__ import annotations

import pathlib
import re
import socket
from collections.abc import Iterator

import grpc
import pytest

from app.core.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tests.integration.test_grpc import (
    CLASSIFY,
    MAX_MESSAGE,
    REGRESS,
    example,
    example_input,
    model_entry,
    predict_request,
    spec,
    wait_for_channel,
    x_input,
)
from tests.serverproc import ServerProcess

STARTUP_FAILURE = 255  # TF Serving's main() returns -1
MONITORING = "/monitoring/prometheus/metrics"
ALIAS = "/tfgate/metrics"


@pytest.fixture(scope="module")
def server(model_zoo, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("compat")
    config = tmp / "models.config"
    entries = [model_entry(name, model_zoo.base_path(name)) for name in
               ("half_plus_two", "classifier")]
    config.write_text("model_config_list {\n  " + "\n  ".join(entries) + "\n}\n")
    monitoring = tmp / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{MONITORING}" }}\n')
    proc = ServerProcess(
        [f"--model_config_file={config}", "--file_system_poll_wait_seconds=0",
         f"--monitoring_config_file={monitoring}", f"--metrics_path={ALIAS}"],
        tmp / "server.log",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def prediction(server: ServerProcess) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=MAX_MESSAGE) as ch:
        wait_for_channel(ch, server)
        yield prediction_service_pb2_grpc.PredictionServiceStub(ch)


def input_tensor(prediction, model: str, signature: str) -> str:  # type: ignore[no-untyped-def]
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec(model), metadata_field=["signature_def"])
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    prediction.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(
        signature_defs)
    return signature_defs.signature_def[signature].inputs["inputs"].name


# --- MultiInference on TF2 exports (TF Serving's testMultiInferenceTf2) ---


def test_multi_inference_on_a_tf2_export(prediction) -> None:  # type: ignore[no-untyped-def]
    # A TF2 export gives each signature its own placeholder: what TF Serving's old
    # "Input tensor must be the same for all Signatures." refused.
    assert input_tensor(prediction, "half_plus_two", "regress_x_to_y") != input_tensor(
        prediction, "half_plus_two", "classify_x_to_y")
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(model_spec=spec("half_plus_two", "regress_x_to_y"), method_name=REGRESS)
    request.tasks.add(model_spec=spec("half_plus_two", "classify_x_to_y"), method_name=CLASSIFY)
    example_input(request.input, example(x=2.0))
    response = prediction.MultiInference(request, timeout=30)
    assert len(response.results) == 2
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for task, result in zip(request.tasks, response.results, strict=True):
        assert result.model_spec == spec("half_plus_two", task.model_spec.signature_name,
                                         version=1)


def test_multi_inference_results_equal_classify_and_regress(prediction) -> None:  # type: ignore[no-untyped-def]
    examples = [example(f0=1.0, f1=-2.0), example(f2=0.5, f3=3.0), example()]
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(model_spec=spec("classifier", "classify"), method_name=CLASSIFY)
    request.tasks.add(model_spec=spec("classifier", "regress"), method_name=REGRESS)
    example_input(request.input, *examples)
    classify = classification_pb2.ClassificationRequest(model_spec=spec("classifier", "classify"))
    example_input(classify.input, *examples)
    regress = regression_pb2.RegressionRequest(model_spec=spec("classifier", "regress"))
    example_input(regress.input, *examples)
    response = prediction.MultiInference(request, timeout=30)
    assert response.results[0].classification_result == prediction.Classify(
        classify, timeout=30).result
    assert response.results[1].regression_result == prediction.Regress(regress, timeout=30).result


def test_a_signature_unfit_for_classify_is_invalid_argument(server: ServerProcess, prediction) -> None:  # type: ignore[no-untyped-def]
    """PreProcessClassification (INVALID_ARGUMENT since TF Serving's TF2 change of 2020),
    for Classify and for a MultiInference task, checked before any task runs."""
    classify = classification_pb2.ClassificationRequest(
        model_spec=spec("classifier", "serving_default"))
    example_input(classify.input, example(f0=1.0))
    with pytest.raises(grpc.RpcError) as info:
        prediction.Classify(classify, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(
        "No classification inputs found in SignatureDef: ")
    before = scrape(server)
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(model_spec=spec("classifier", "regress"), method_name=REGRESS)
    request.tasks.add(model_spec=spec("classifier", "serving_default"), method_name=CLASSIFY)
    example_input(request.input, example(f0=1.0))
    with pytest.raises(grpc.RpcError) as info:
        prediction.MultiInference(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(
        "No classification inputs found in SignatureDef: ")
    runs = "tfgate_worker_run_latency_count"
    # the valid regress task never ran
    assert samples(scrape(server), runs, model_name="classifier") == samples(
        before, runs, model_name="classifier")


# --- which metrics each API records ---


def scrape(server: ServerProcess, path: str = ALIAS) -> str:
    with server.client() as http:
        response = http.get(path)
    assert response.status_code == 200
    return response.text


def samples(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def counts(server: ServerProcess, model: str) -> dict[str, float]:
    text = scrape(server)
    p = ":tensorflow:serving:"
    return {
        "requests": samples(text, p + "request_count", model_name=model),
        "request_latency": samples(text, p + "request_latency_count", model_name=model),
        **{f"runtime {api}": samples(text, p + "runtime_latency_count", model_name=model,
                                     API=api, runtime="TF1")
           for api in ("Predict", "Classify", "Regress")},
        "runtime": samples(text, p + "runtime_latency_count", model_name=model),
        "example requests": samples(text, p + "request_example_counts_count", model=model),
        "examples": samples(text, p + "request_example_counts_sum", model=model),
        "examples total": samples(text, p + "request_example_count_total", model=model),
        "worker runs": samples(text, "tfgate_worker_run_latency_count", model_name=model),
    }


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


def test_each_api_labels_runtime_latency_and_multi_inference_records_examples_only(
    server: ServerProcess, prediction
) -> None:  # type: ignore[no-untyped-def]
    model = "half_plus_two"
    before = counts(server, model)
    prediction.Predict(predict_request(model, x_input([1.0])), timeout=30)
    after_predict = counts(server, model)
    assert grown(before, after_predict) == {
        "requests": 1, "request_latency": 1, "runtime Predict": 1, "runtime": 1,
        "worker runs": 1}

    classify = classification_pb2.ClassificationRequest(model_spec=spec(model, "classify_x_to_y"))
    example_input(classify.input, example(x=1.0), example(x=2.0))
    prediction.Classify(classify, timeout=30)
    after_classify = counts(server, model)
    # no example counts for Classify (TF Serving records them for MultiInference only)
    assert grown(after_predict, after_classify) == {
        "requests": 1, "request_latency": 1, "runtime Classify": 1, "runtime": 1,
        "worker runs": 1}

    with server.client() as http:
        body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}
        assert http.post(f"/v1/models/{model}:regress", json=body).status_code == 200
    after_regress = counts(server, model)
    # REST regress: the same "Regress" runtime label as gRPC
    assert grown(after_classify, after_regress) == {
        "requests": 1, "request_latency": 1, "runtime Regress": 1, "runtime": 1,
        "worker runs": 1}

    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(model_spec=spec(model, "regress_x_to_y"), method_name=REGRESS)
    request.tasks.add(model_spec=spec(model, "classify_x_to_y"), method_name=CLASSIFY)
    example_input(request.input, *(example(x=float(i)) for i in range(3)))
    prediction.MultiInference(request, timeout=30)
    # MultiInference: one example count of 3, nothing else of TF Serving's
    # (prediction_service_impl.cc records no request_count or latency for it,
    # multi_inference.cc no runtime_latency); tfgate runs each task's signature once.
    assert grown(after_regress, counts(server, model)) == {
        "example requests": 1, "examples": 3, "examples total": 3, "worker runs": 2}


# --- the page's bytes and paths ---

# TF's Buckets::Exponential(10, 1.8, 33) as absl::StrCat prints each bound (checked against
# C's printf("%.6g") of the bounds multiplied step by step)
LATENCY_BOUNDS = [
    "10", "18", "32.4", "58.32", "104.976", "188.957", "340.122", "612.22", "1102", "1983.59",
    "3570.47", "6426.84", "11568.3", "20823", "37481.3", "67466.4", "121440", "218591",
    "393464", "708235", "1.27482e+06", "2.29468e+06", "4.13043e+06", "7.43477e+06",
    "1.33826e+07", "2.40887e+07", "4.33596e+07", "7.80473e+07", "1.40485e+08", "2.52873e+08",
    "4.55172e+08", "8.19309e+08", "1.47476e+09", "+Inf",
]


def test_metrics_page_as_tf_serving_prints_it(server: ServerProcess, prediction) -> None:  # type: ignore[no-untyped-def]
    prediction.Predict(predict_request("half_plus_two", x_input([1.0])), timeout=30)
    text = scrape(server)
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith("# HELP :")]
    prefix = ':tensorflow:serving:runtime_latency_bucket{model_name="half_plus_two",' \
        'API="Predict",runtime="TF1",le="'
    bounds = [line[len(prefix):].split('"')[0] for line in lines if line.startswith(prefix)]
    assert bounds == LATENCY_BOUNDS
    cumulative = [int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)]
    assert cumulative == sorted(cumulative)
    count = [line for line in lines if line.startswith(
        ":tensorflow:serving:runtime_latency_count{" + 'model_name="half_plus_two",API="Predict"')]
    assert count == [
        ':tensorflow:serving:runtime_latency_count{model_name="half_plus_two",API="Predict",'
        f'runtime="TF1"}} {cumulative[-1]}']
    # every bound and sum of every histogram in the "%.6g" form (no "10.0", no "1e6")
    six_g = re.compile(r"^-?\d+(\.\d+)?(e[+-]\d\d+)?$")
    for line in lines:
        if "_bucket{" in line:
            bound = line.split('le="')[1].split('"')[0]
            assert bound == "+Inf" or (six_g.match(bound) and not bound.endswith(".0")), line
        elif line.startswith(":") and "_sum{" in line:
            assert six_g.match(line.rsplit(" ", 1)[1]), line
    # latencies are whole microseconds, so a latency sum below 1e6 is an integer
    sums = [line.rsplit(" ", 1)[1] for line in lines
            if line.startswith(":tensorflow:serving:request_latency_sum{")]
    assert sums and all(s.isdigit() or "e+" in s for s in sums)
    # TF Serving's metrics sorted by name, then tfgate's own
    names = [line.split()[2] for line in lines if line.startswith("# TYPE :")]
    assert names == sorted(names)
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_metrics_at_the_monitoring_path_and_the_alias_only(server: ServerProcess) -> None:
    with server.client() as http:
        assert http.get("/metrics").status_code == 404  # moved by --metrics_path
        for path in (ALIAS, MONITORING):
            response = http.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            assert "# TYPE :tensorflow:serving:request_count counter" in response.text


def test_metrics_alias_off_leaves_tf_serving_behaviour(model_zoo, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    """--metrics_path= and no monitoring config: no metrics anywhere, as TF Serving."""
    proc = ServerProcess(
        ["--model_name=hp2", f"--model_base_path={model_zoo.base_path('half_plus_two')}",
         "--metrics_path="],
        tmp_path / "s.log",
    ).start()
    try:
        with proc.client() as http:
            assert http.get("/v1/models/hp2").status_code == 200
            assert http.get("/metrics").status_code == 404
            assert http.get(MONITORING).status_code == 404
    finally:
        assert proc.stop() == 0


# --- exit status ---


@pytest.mark.parametrize(
    "args",
    [
        ["--port=x", "--model_base_path=/m"],  # a flag that does not parse
        [],  # no model path
        ["--port=0", "--model_base_path=/m"],  # no gRPC port or socket
        ["--model_base_path=/m", "--batching_parameters_file=/b"],
        ["--model_base_path=/m", "--metrics_path=metrics"],
    ],
)
def test_exit_status_255_when_flags_fail(args: list[str], tmp_path: pathlib.Path) -> None:
    proc = ServerProcess(args, tmp_path / "s.log")
    proc.start(wait=False)
    try:
        assert proc.wait_exit(60) == STARTUP_FAILURE
    finally:
        proc.stop()


def test_exit_status_255_when_the_config_file_does_not_parse(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { name: ")
    proc = ServerProcess([f"--model_config_file={config}"], tmp_path / "s.log")
    proc.start(wait=False)
    try:
        assert proc.wait_exit(60) == STARTUP_FAILURE
    finally:
        proc.stop()
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in proc.log()


def test_exit_status_255_when_the_initial_load_fails(tmp_path: pathlib.Path) -> None:
    version = tmp_path / "broken" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"not a SavedModel")
    proc = ServerProcess(
        ["--model_name=broken", f"--model_base_path={tmp_path / 'broken'}",
         "--max_num_load_retries=0"],
        tmp_path / "s.log",
    )
    proc.start(wait=False)
    try:
        assert proc.wait_exit(120) == STARTUP_FAILURE
    finally:
        proc.stop()
    assert "1 servable(s) did not become available: {{name: broken version: 1} due to error:" \
        in proc.log()


def test_exit_status_255_when_the_grpc_port_is_taken(model_zoo, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = ServerProcess(
            ["--model_name=hp2", f"--model_base_path={model_zoo.base_path('half_plus_two')}",
             f"--port={port}"],
            tmp_path / "s.log",
        )
        proc.start(wait=False)
        try:
            assert proc.wait_exit(120) == STARTUP_FAILURE
        finally:
            proc.stop()
