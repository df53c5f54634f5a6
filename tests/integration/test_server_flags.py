"""`tensorflow_model_server` flags and startup behaviour, each on its own server process."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest

from tests.serverproc import BIN, ServerProcess, port_open


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tensorflow_model_server"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_single_model_mode_serves_highest_version(tfs_testdata: pathlib.Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(
        [
            "--model_name=hp2",
            f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_2_versions",
        ],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            status = http.get("/v1/models/hp2").json()["model_version_status"]
            assert [s["version"] for s in status] == ["124"]
            assert http.post("/v1/models/hp2:predict", json={"instances": [2.0]}).json() == {
                "predictions": [3.0]
            }
            missing = http.post("/v1/models/hp2/versions/123:predict", json={"instances": [2.0]})
            assert missing.status_code == 404
    finally:
        assert server.stop() == 0


def test_failed_initial_load_exits_non_zero_with_tf_serving_message(
    tfs_testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    server = ServerProcess(
        [
            "--model_name=bad",
            f"--model_base_path={tfs_testdata}/bad_half_plus_two",
            "--max_num_load_retries=0",
        ],
        tmp_path / "s.log",
    )
    server.start(wait=False)
    code = server.wait_exit(120)
    server.stop()
    assert code == 255  # TF Serving's main() returns -1
    assert "1 servable(s) did not become available: {{name: bad version: 123} due to error:" in (
        server.log()
    )
    assert not port_open(server.rest_port)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (["--port=0", "--model_base_path=/m"], "At least one of server_options.grpc_port"),
        (["--port=x", "--model_base_path=/m"], "Illegal value 'x' for flag --port"),
    ],
)
def test_startup_flag_errors(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 255
    assert message in result.stderr


def test_bad_model_config_file(tfs_testdata: pathlib.Path) -> None:
    result = run_cli(f"--model_config_file={tfs_testdata}/fixtures/bad_model_config.txt")
    assert result.returncode == 255
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr


def test_version_flag() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    first, second = result.stdout.splitlines()
    assert first.startswith("TensorFlow ModelServer: tfgate-")
    import importlib.metadata

    assert second == f"TensorFlow Library: {importlib.metadata.version('tensorflow')}"


def test_unknown_argument_and_ignored_flags_do_not_stop_the_server(
    tfs_testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    server = ServerProcess(
        [
            "--model_name=hp2",
            f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu",
            "--prefer_tflite_model=true",
            "--xla_cpu_compilation_enabled",
            "stray_argument",
        ],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            assert http.get("/v1/models/hp2").status_code == 200
    finally:
        server.stop()
    log = server.log()
    assert "unknown argument: stray_argument" in log
    assert "--prefer_tflite_model has no effect in tfgate" in log


def test_cors_flag_adds_headers(tfs_testdata: pathlib.Path, tmp_path: pathlib.Path) -> None:
    server = ServerProcess(
        [
            "--model_name=hp2",
            f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu",
            "--rest_api_enable_cors_support",
        ],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            response = http.post("/v1/models/hp2:predict", json={"instances": [2.0]})
            assert response.headers["access-control-allow-origin"] == "*"
            assert response.headers["access-control-allow-methods"] == "POST, GET"
            assert response.headers["access-control-allow-headers"] == "Content-Type"
            error = http.get("/v1/models/nope")
            assert error.headers["access-control-allow-origin"] == "*"
    finally:
        server.stop()


@pytest.mark.slow
def test_rest_timeout_gives_504_and_server_recovers(model_zoo, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    base = model_zoo.base_path("slow")
    server = ServerProcess(
        ["--model_name=slow", f"--model_base_path={base}", "--rest_api_timeout_in_ms=100"],
        tmp_path / "s.log",
    ).start()
    try:
        with server.client() as http:
            response = http.post("/v1/models/slow:predict", json={"instances": [[1.0]]})
            assert response.status_code == 504
            assert "error" in response.json()
            time.sleep(0.5)
            assert http.get("/v1/models/slow").status_code == 200
    finally:
        server.stop()


def test_readiness_waits_for_first_version(tmp_path: pathlib.Path, model_zoo) -> None:  # type: ignore[no-untyped-def]
    """With no version on disk the server waits (not listening); when one appears it serves."""
    base = tmp_path / "late"
    base.mkdir()
    server = ServerProcess(["--model_name=late", f"--model_base_path={base}"], tmp_path / "s.log")
    server.start(wait=False)
    try:
        time.sleep(3)
        assert server.process is not None and server.process.poll() is None
        assert not port_open(server.rest_port)
        source = model_zoo.base_path("half_plus_two") / "1"
        subprocess.run(["cp", "-r", str(source), str(base / "7")], check=True)
        server.wait_ready(120)
        with server.client() as http:
            assert http.get("/readyz").status_code == 200
            assert http.post("/v1/models/late:predict", json={"instances": [2.0]}).json() == {
                "predictions": [3.0]
            }
    finally:
        server.stop()


def test_sigterm_exits_cleanly_and_leaves_no_workers(
    tfs_testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    server = ServerProcess(
        [
            "--model_name=hp2",
            f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu",
            "--num_cpu_workers=2",
        ],
        tmp_path / "s.log",
    ).start()
    workers = server.child_pids()
    assert len(workers) == 2
    assert server.stop() == 0
    for pid in workers:
        assert (
            not pathlib.Path(f"/proc/{pid}").exists()
            or "Z" in (pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2])
        )


def test_python_never_imports_tensorflow_in_gateway() -> None:
    code = (
        "import sys; import app.main, app.rest.api, app.serving.service, app.codec.tensor_json, app.codec.tensor_proto; "
        "print('tensorflow' in sys.modules and hasattr(sys.modules['tensorflow'], 'constant'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
