"""gRPC over TLS and mutual TLS (--ssl_config_file), with certificates made here by openssl.

Two servers: server-side TLS only (client_verify false) and mutual TLS (client_verify true,
custom_ca = the test CA). Plaintext clients, clients without a certificate and clients with
a certificate from another CA are refused.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from app.core.protos import prediction_service_pb2_grpc
from tests.integration.test_grpc import (
    model_entry,
    predict_request,
    to_numpy,
    wait_for_channel,
    x_input,
)
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: pathlib.Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
             cwd=directory)


def make_cert(directory: pathlib.Path, name: str, ca: str, extensions: str) -> None:
    """A key and a certificate signed by `ca` (which make_ca created in `directory`)."""
    (directory / f"{name}.ext").write_text(extensions + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
             "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_ca(directory, "other_ca")
    make_cert(directory, "server", "ca",
              "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    make_cert(directory, "client", "ca", "extendedKeyUsage=clientAuth")
    make_cert(directory, "stranger", "other_ca", "extendedKeyUsage=clientAuth")
    return directory


def read(pki: pathlib.Path, name: str) -> bytes:
    return (pki / name).read_bytes()


def ssl_config_text(pki: pathlib.Path, client_verify: bool) -> str:
    def quoted(name: str) -> str:
        return '"' + read(pki, name).decode().replace("\n", "\\n") + '"'

    lines = [f"server_key: {quoted('server.key')}", f"server_cert: {quoted('server.crt')}"]
    if client_verify:
        lines += [f"custom_ca: {quoted('ca.crt')}", "client_verify: true"]
    return "\n".join(lines) + "\n"


def tls_server(
    pki: pathlib.Path, model_zoo, tmp: pathlib.Path, client_verify: bool,  # type: ignore[no-untyped-def]
    implementation: str = "grpcio",
) -> ServerProcess:
    ssl_config = tmp / "ssl.config"
    ssl_config.write_text(ssl_config_text(pki, client_verify))
    config = tmp / "models.config"
    config.write_text(
        "model_config_list {\n" + model_entry("tiny", model_zoo.base_path("tiny")) + "\n}\n")
    return ServerProcess(
        [f"--model_config_file={config}", "--file_system_poll_wait_seconds=0",
         f"--ssl_config_file={ssl_config}", f"--grpc_implementation={implementation}"],
        tmp / "server.log",
    )


# Both gRPC servers: grpc.aio (grpc core's TLS) and tfgate's HTTP/2 one, the default (Python's
# ssl with ALPN h2).
@pytest.fixture(scope="module", params=["grpcio", "h2"])
def implementation(request) -> str:  # type: ignore[no-untyped-def]
    return request.param


@pytest.fixture(scope="module")
def tls(pki, model_zoo, tmp_path_factory, implementation) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    proc = tls_server(pki, model_zoo, tmp_path_factory.mktemp("tls"), client_verify=False,
                      implementation=implementation)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def mtls(pki, model_zoo, tmp_path_factory, implementation) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    proc = tls_server(pki, model_zoo, tmp_path_factory.mktemp("mtls"), client_verify=True,
                      implementation=implementation)
    proc.start()
    yield proc
    proc.stop()


def predict_over(channel: grpc.Channel) -> np.ndarray:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(predict_request("tiny", x_input([2.0])), timeout=20)
    return to_numpy(response.outputs["y"])


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        predict_over(channel)
    return info.value.code()


def secure_channel(server: ServerProcess, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(f"127.0.0.1:{server.grpc_port}", credentials)


def test_tls(tls: ServerProcess, pki: pathlib.Path) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=read(pki, "ca.crt"))
    with secure_channel(tls, credentials) as channel:
        wait_for_channel(channel, tls)
        np.testing.assert_allclose(predict_over(channel), [[3.0]])


def test_tls_refuses_plaintext(tls: ServerProcess) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tls.grpc_port}") as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_tls_client_must_trust_server(tls: ServerProcess, pki: pathlib.Path) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=read(pki, "other_ca.crt"))
    with secure_channel(tls, credentials) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_mtls_with_client_certificate(mtls: ServerProcess, pki: pathlib.Path) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(pki, "ca.crt"),
        private_key=read(pki, "client.key"),
        certificate_chain=read(pki, "client.crt"),
    )
    with secure_channel(mtls, credentials) as channel:
        wait_for_channel(channel, mtls)
        np.testing.assert_allclose(predict_over(channel), [[3.0]])


def test_mtls_refuses_client_without_certificate(mtls: ServerProcess, pki: pathlib.Path) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=read(pki, "ca.crt"))
    with secure_channel(mtls, credentials) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_certificate_from_another_ca(mtls: ServerProcess, pki: pathlib.Path) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(pki, "ca.crt"),
        private_key=read(pki, "stranger.key"),
        certificate_chain=read(pki, "stranger.crt"),
    )
    with secure_channel(mtls, credentials) as channel:
        assert refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_bad_ssl_config_stops_startup(model_zoo, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text('server_key: "not a key" server_cert: "not a cert"\n')
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n" + model_entry("tiny", model_zoo.base_path("tiny")) + "\n}\n")
    proc = ServerProcess(
        [f"--model_config_file={config}", f"--ssl_config_file={ssl_config}"],
        tmp_path / "server.log",
    )
    proc.start(wait=False)
    try:
        assert proc.wait_exit(120) != 0
        assert "Failed to BuildAndStart gRPC server" in proc.log()
    finally:
        proc.stop()
