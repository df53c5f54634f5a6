"""A production install, built as Dockerfile.gpu builds the image, starts and serves.

The rest of the suite runs from the dev venv, which has every extra installed: a runtime
import that only an extra declares (hpack once was) passes there and breaks `pip install
tfgate` and the image. Here a plain venv from the base interpreter gets
`pip install -r requirements.lock`, then the package (the files the image copies) with
`--no-deps --no-build-isolation`; the Dockerfile's own import check runs in it, and then its
`tensorflow_model_server` is started the way TF Serving's is (--port, --rest_api_port,
--model_name, --model_base_path) on a model a fixture exports, answers a REST and a gRPC
predict from the official tensorflow-serving-api stubs, and exits 0 on SIGTERM.

The venv lives in pytest's temporary directory, outside the checkout; pip's cache makes a
repeat build take about a minute here.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.serverproc import free_port, port_open
from tests.unit.test_deploy_files import dockerfile_instructions, image_import_check

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
# What Dockerfile.gpu copies into /tmp/tfgate before `pip install --no-deps`.
PACKAGE_FILES = ["pyproject.toml", "README.md", "app", "workers", "proto"]
PIP_TIMEOUT_SECONDS = 900
START_TIMEOUT_SECONDS = 180


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of an installed tfgate: nothing of this checkout or the dev venv."""
    env = {
        key: value for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env.update(extra)
    return env


def run(argv: list[str], cwd: pathlib.Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-3000:]}"
        f"\n{result.stderr[-5000:]}"
    )
    return result


@pytest.fixture(scope="module")
def production_venv(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("production")
    venv = tmp / "venv"
    # The base interpreter, not the dev venv's (a plain venv: none of the dev packages).
    base_python = getattr(sys, "_base_executable", sys.executable)
    started = time.monotonic()
    run([base_python, "-m", "venv", str(venv)], tmp, 120)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.lock")], tmp,
        PIP_TIMEOUT_SECONDS)
    source = tmp / "tfgate"
    source.mkdir()
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
        tmp, PIP_TIMEOUT_SECONDS)
    shutil.rmtree(source)
    print(f"production venv built in {time.monotonic() - started:.0f} s")
    return venv


@pytest.fixture(scope="module")
def model_base_path(model_zoo, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:  # type: ignore[no-untyped-def]
    """Version 1 alone, in a directory of its own: other modules add versions to the shared
    zoo's half_plus_two (2, 123), and the server would serve the latest of them."""
    base = tmp_path_factory.mktemp("production") / "half_plus_two"
    shutil.copytree(model_zoo.base_path("half_plus_two") / "1", base / "1")
    return base


def test_the_image_import_check_passes(production_venv: pathlib.Path) -> None:
    # Dockerfile.gpu's build check, run from outside any checkout so that only the installed
    # package can be imported.
    command = image_import_check(dockerfile_instructions((ROOT / "Dockerfile.gpu").read_text()))
    command[0] = str(production_venv / "bin" / "python")
    result = run(command, production_venv, 300)
    assert "modules import" in result.stdout
    installed = run([command[0], "-I", "-c", "import app; print(app.__file__)"],
                    production_venv, 60)
    assert installed.stdout.startswith(str(production_venv)), installed.stdout


@contextlib.contextmanager
def model_server(venv: pathlib.Path, base_path: pathlib.Path,
                 log_path: pathlib.Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    grpc_port, rest_port = free_port(), free_port()
    argv = [
        str(venv / "bin" / "tensorflow_model_server"),
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        "--model_name=half_plus_two",
        f"--model_base_path={base_path}",
        # tfgate's: listen on loopback only (TF Serving binds every interface)
        "--rest_api_host=127.0.0.1",
        "--grpc_host=127.0.0.1",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=venv,
            env=clean_env(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1"),
        )
        try:
            yield process, grpc_port, rest_port
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def wait_available(process: subprocess.Popen[bytes], rest_port: int, grpc_port: int,
                   log_path: pathlib.Path) -> None:
    url = f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"tensorflow_model_server exited with {process.returncode}:\n"
                f"{log_path.read_text(errors='replace')[-5000:]}"
            )
        if port_open(rest_port) and port_open(grpc_port):
            with contextlib.suppress(OSError), opener.open(url, timeout=5) as response:
                states = [v["state"] for v in json.loads(response.read())["model_version_status"]]
                if "AVAILABLE" in states:
                    return
        time.sleep(0.5)
    raise AssertionError(f"not AVAILABLE in {START_TIMEOUT_SECONDS} s:\n"
                         f"{log_path.read_text(errors='replace')[-5000:]}")


def test_installed_server_serves_rest_and_grpc_and_exits_0_on_sigterm(
    production_venv: pathlib.Path, model_base_path: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    log_path = tmp_path / "server.log"
    with model_server(production_venv, model_base_path, log_path) as (process, grpc_port,
                                                                      rest_port):
        wait_available(process, rest_port, grpc_port, log_path)

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            f"http://127.0.0.1:{rest_port}/v1/models/half_plus_two:predict",
            data=json.dumps({"instances": [1.0, 2.0, 5.0]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with opener.open(request, timeout=60) as response:
            assert response.status == 200
            assert json.loads(response.read()) == {"predictions": [2.5, 3.0, 4.5]}

        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = "half_plus_two"
        predict.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3),
                     tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
            float_val=[1.0, 2.0, 5.0],
        ))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            reply = stub.Predict(predict, timeout=60)
        assert reply.model_spec.name == "half_plus_two"
        assert reply.model_spec.version.value == 1
        y = reply.outputs["y"]
        assert [d.size for d in y.tensor_shape.dim] == [3, 1]
        values = (np.frombuffer(y.tensor_content, np.float32) if y.tensor_content
                  else np.asarray(y.float_val, np.float32))
        assert values.tolist() == [2.5, 3.0, 4.5]

        # The dashboard's files are package data: the installed package serves them.
        for path, expected in (("/dashboard", b"/dashboard/static/dashboard.js"),
                               ("/dashboard/static/dashboard.js", b"tfgateDashboard"),
                               ("/dashboard/static/render.js", b"tfgateRender"),
                               ("/dashboard/static/dashboard.css", b"--accent")):
            with opener.open(f"http://127.0.0.1:{rest_port}{path}", timeout=60) as response:
                assert response.status == 200, path
                assert expected in response.read(), path

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text(errors="replace")[-5000:]
    log = log_path.read_text(errors="replace")
    # The default transport: tfgate's own HTTP/2 server (app/rpc/h2).
    assert "gRPC served by tfgate's HTTP/2 server (--grpc_implementation=h2)" in log, log[-3000:]
