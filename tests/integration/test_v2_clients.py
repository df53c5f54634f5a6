"""The Open Inference Protocol (V2) with the real clients: Triton's tritonclient (HTTP and
gRPC) and KServe's Python SDK (REST and gRPC) against a real tfgate server serving TF
Serving's half_plus_two (version 123), a multi-input export, a DT_STRING (BYTES) export and a
DT_HALF (FP16) export; and tfgate's KServe manifests loaded into the SDK's models.

The clients pin protobuf below 7, so they live in .venv-v2clients (scripts/setup_v2_clients.sh,
run by scripts/setup.sh) and their checks (tests/integration/v2_clients/) run there as
subprocesses: each prints one line per check and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, TFS_TESTDATA, ModelZoo
from tests.serverproc import ServerProcess

CLIENT_PYTHON = pathlib.Path(
    os.environ.get("TFGATE_V2_CLIENT_PYTHON", ROOT / ".venv-v2clients" / "bin" / "python")
)
CHECKS = ROOT / "tests" / "integration" / "v2_clients"
CHECK_TIMEOUT_SECONDS = 180


@pytest.fixture(scope="module")
def client_python() -> pathlib.Path:
    if not CLIENT_PYTHON.exists():
        # CI's set-up makes the venv: a missing one there is a broken set-up, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"V2 client venv missing at {CLIENT_PYTHON}: scripts/setup.sh makes it")
        pytest.skip("V2 client venv missing: run scripts/setup_v2_clients.sh")
    return CLIENT_PYTHON


def half_plus_two_base(model_zoo: ModelZoo) -> pathlib.Path:
    """TF Serving's own export when ../shared is present, else tfgate's, as version 123."""
    tfs = TFS_TESTDATA / "saved_model_half_plus_two_cpu"
    if (tfs / "00000123").is_dir():
        return tfs
    return model_zoo.base_path("half_plus_two", 123)


@pytest.fixture(scope="module", params=["grpcio", "h2"])
def server(
    request: pytest.FixtureRequest,
    model_zoo: ModelZoo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("v2")
    models = {
        "half_plus_two": half_plus_two_base(model_zoo),
        "multi_io": model_zoo.base_path("multi_io"),
        "strings": model_zoo.base_path("strings"),
        "half_precision": model_zoo.base_path("half_precision"),
    }
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
        for name, path in models.items()
    )
    config = directory / "models.config"
    config.write_text(f"model_config_list {{\n{entries}}}\n")
    proc = ServerProcess(
        [f"--model_config_file={config}", f"--grpc_implementation={request.param}"],
        directory / "server.log",
    )
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


def run_checks(python: pathlib.Path, script: str, *args: str) -> str:
    result = subprocess.run(
        [str(python), str(CHECKS / script), *args],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_SECONDS,
        cwd=ROOT,
        env=dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost"),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "ALL OK" in result.stdout, output
    return result.stdout


def test_tritonclient_http(server: ServerProcess, client_python: pathlib.Path) -> None:
    if "h2" in " ".join(server.argv):
        pytest.skip("REST does not depend on the gRPC transport: checked once")
    out = run_checks(client_python, "triton_checks.py", "http", f"127.0.0.1:{server.rest_port}")
    # JSON and binary tensor data both went through.
    assert "ok half_plus_two infer (json)" in out and "ok FP16 in and out (binary)" in out


def test_tritonclient_grpc(server: ServerProcess, client_python: pathlib.Path) -> None:
    out = run_checks(client_python, "triton_checks.py", "grpc", f"127.0.0.1:{server.grpc_port}")
    assert "ok BYTES in and out (binary)" in out


def test_kserve_sdk(server: ServerProcess, client_python: pathlib.Path) -> None:
    if "h2" in " ".join(server.argv):
        pytest.skip("the SDK's gRPC call is covered on grpcio; tritonclient covers h2")
    out = run_checks(
        client_python,
        "kserve_checks.py",
        "serve",
        server.rest_url,
        f"127.0.0.1:{server.grpc_port}",
    )
    assert "ok half_plus_two infer (binary)" in out and "(gRPC v2)" in out


def test_kserve_manifests_load_into_the_sdk_models(client_python: pathlib.Path) -> None:
    kserve_dir = ROOT / "deploy" / "k8s" / "kserve"
    run_checks(
        client_python,
        "kserve_checks.py",
        "manifests",
        str(kserve_dir / "servingruntime.yaml"),
        str(kserve_dir / "inferenceservice.yaml"),
    )
