"""Model warmup (assets.extra/tf_serving_warmup_requests) replayed before a version serves."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.serverproc import ServerProcess

WRITE_WARMUP = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
    path, count = sys.argv[1], int(sys.argv[2])
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(count):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[float(i)]], dtype=tf.float32))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    """
)


def model_with_warmup(zoo_version: pathlib.Path, base: pathlib.Path, records: int | None,
                      corrupt: bool = False) -> pathlib.Path:
    version = base / "1"
    shutil.copytree(zoo_version, version)
    extra = version / "assets.extra"
    extra.mkdir()
    target = extra / "tf_serving_warmup_requests"
    if corrupt:
        target.write_bytes(b"\x00garbage that is not a TFRecord\xff" * 10)
    elif records is not None:
        subprocess.run([sys.executable, "-c", WRITE_WARMUP, str(target), str(records)], check=True)
    return base


@pytest.fixture(scope="module")
def hp2(model_zoo) -> pathlib.Path:  # type: ignore[no-untyped-def]
    return model_zoo.base_path("half_plus_two") / "1"


def test_warmup_records_replayed_before_serving(hp2: pathlib.Path, tmp_path: pathlib.Path) -> None:
    base = model_with_warmup(hp2, tmp_path / "m", records=3)
    server = ServerProcess(
        ["--model_name=m", f"--model_base_path={base}", "--num_request_iterations_for_warmup=2"],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            assert http.post("/v1/models/m:predict", json={"instances": [2.0]}).json() == {
                "predictions": [3.0]
            }
            metrics = http.get("/metrics").text
    finally:
        server.stop()
    assert "Number of warmup records read: 3." in server.log()
    # one finished warmup of the version directory, labelled as TF Serving labels it
    warmup = [line for line in metrics.splitlines()
              if line.startswith(":tensorflow:serving:model_warmup_latency_count{")]
    assert warmup == [
        f':tensorflow:serving:model_warmup_latency_count{{model_path="{base / "1"}",status="OK"}} 1'
    ]


@pytest.mark.parametrize(
    ("records", "corrupt", "message"),
    [
        (None, True, "Please verify your warmup data is in TFRecord format."),
        (1001, False, "Number of warmup records exceeds the maximum (1000) at"),
    ],
)
def test_bad_warmup_file_fails_the_load(
    hp2: pathlib.Path, tmp_path: pathlib.Path, records: int | None, corrupt: bool, message: str
) -> None:
    base = model_with_warmup(hp2, tmp_path / "m", records=records, corrupt=corrupt)
    server = ServerProcess(
        ["--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0"],
        tmp_path / "s.log",
    )
    server.start(wait=False)
    code = server.wait_exit(120)
    server.stop()
    assert code != 0
    assert "did not become available" in server.log()
    assert message in server.log()


def test_warmup_disabled_ignores_the_file(hp2: pathlib.Path, tmp_path: pathlib.Path) -> None:
    base = model_with_warmup(hp2, tmp_path / "m", records=None, corrupt=True)
    server = ServerProcess(
        ["--model_name=m", f"--model_base_path={base}", "--enable_model_warmup=false"],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            assert http.get("/v1/models/m").status_code == 200
    finally:
        server.stop()
