"""deploy/nginx/nginx.conf in front of two real tfgate replicas: REST and gRPC predictions are
balanced over both, and keep succeeding when one replica goes away (passive health checks plus
a retry on the other replica). Skipped where nginx is not installed (apt-get install
nginx-light); the config's syntax is checked in tests/unit/test_deploy_files.py.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from app.core.protos import predict_pb2, prediction_service_pb2_grpc, tensor_pb2, types_pb2
from tests.serverproc import ROOT, ServerProcess, free_port, port_open

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed"),
]

UPSTREAM_SERVER = re.compile(r"(\s+)server tfgate-(\d+):(850[01])( [^;]*;)")


def nginx_conf(
    text: str, rest_port: int, grpc_port: int, replicas: list[ServerProcess], logs: pathlib.Path
) -> str:
    """The example config with our replicas in its upstreams, listening on free loopback
    ports, logging into the test's directory; every other line as written."""
    lines = []
    for line in text.splitlines(keepends=True):
        match = UPSTREAM_SERVER.match(line)
        if match is None:
            lines.append(line)
        elif match[2] == "1":  # the example's first replica stands for ours
            indent, port, options = match[1], match[3], match[4]
            for replica in replicas:
                address = replica.rest_port if port == "8501" else replica.grpc_port
                lines.append(f"{indent}server 127.0.0.1:{address}{options}\n")
    text = "".join(lines)
    assert "listen 8501;" in text and "listen 8500 http2;" in text
    text = text.replace("listen 8501;", f"listen 127.0.0.1:{rest_port};")
    text = text.replace("listen 8500 http2;", f"listen 127.0.0.1:{grpc_port} http2;")
    return text.replace("/var/log/nginx/", f"{logs}/")


@contextlib.contextmanager
def running_nginx(conf: pathlib.Path, prefix: pathlib.Path, port: int) -> Iterator[None]:
    process = subprocess.Popen(
        [
            "nginx",
            "-p",
            str(prefix),
            "-c",
            str(conf),
            "-g",
            f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert process.poll() is None, (prefix / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx does not listen"
            time.sleep(0.1)
        yield
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def grpc_predict(port: int, value: float) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape={"dim": [{"size": 1}, {"size": 1}]},
            float_val=[value],
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30)
    return list(response.outputs["y"].float_val)


def predict_count(replica: ServerProcess) -> float:
    """Successful predict requests this replica served, from its own metrics."""
    text = httpx.get(f"{replica.rest_url}/metrics", timeout=10).text
    pattern = r':tensorflow:serving:request_count\{model_name="half_plus_two",status="OK"\} (\S+)'
    match = re.search(pattern, text)
    return float(match[1]) if match else 0.0


def test_nginx_balances_rest_and_grpc_over_replicas(model_zoo, tmp_path: pathlib.Path) -> None:
    base_path = model_zoo.base_path("half_plus_two")
    args = ["--model_name=half_plus_two", f"--model_base_path={base_path}"]
    replicas = [ServerProcess(args, tmp_path / f"replica{i}.log") for i in range(2)]
    rest_port, grpc_port = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx_conf(
            (ROOT / "deploy/nginx/nginx.conf").read_text(), rest_port, grpc_port, replicas, tmp_path
        )
    )
    try:
        for replica in replicas:
            replica.start(wait=False)
        for replica in replicas:
            replica.wait_ready()
            deadline = time.monotonic() + 120
            while httpx.get(f"{replica.rest_url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, replica.log()
                time.sleep(0.2)
        with (
            running_nginx(conf, tmp_path, rest_port),
            httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", timeout=30) as client,
        ):
            assert client.get("/nginx-health").text == "ok\n"
            for i in range(20):
                response = client.post(
                    "/v1/models/half_plus_two:predict", json={"instances": [float(i)]}
                )
                assert response.status_code == 200, response.text
                assert response.json() == {"predictions": [0.5 * i + 2.0]}
            for i in range(10):
                assert grpc_predict(grpc_port, float(i)) == [0.5 * i + 2.0]
            # least_conn over two idle replicas: both served some of the 30 requests
            counts = [predict_count(r) for r in replicas]
            assert sum(counts) == 30 and min(counts) > 0, counts
            assert client.get("/v1/admin/models").status_code == 421

            # One replica goes away: nothing fails, the other one answers everything.
            replicas[0].stop()
            for i in range(10):
                response = client.post(
                    "/v1/models/half_plus_two:predict", json={"instances": [float(i)]}
                )
                assert response.status_code == 200, response.text
                assert grpc_predict(grpc_port, float(i)) == [0.5 * i + 2.0]
            assert predict_count(replicas[1]) == counts[1] + 20
    finally:
        for replica in replicas:
            replica.stop()
