"""Hostile-client tests (issue 19): a real server on 127.0.0.1, attacked through raw sockets
and the official tensorflow-serving-api stubs; every test checks the server stays up, that
legitimate calls keep succeeding, and (where an attack could grow it) that the gateway's RSS
comes back near its baseline.

The server here runs grpc.aio unless a module picks the transport (test_tensor_bounds.py runs
both; the default transport, h2, has its own rows in test_h2_transport.py and
test_h2_request_quota.py), with short timeouts so the tests stay quick; tfgate's own model zoo supplies half_plus_two (y = 0.5x + 2, input x [None, 1]).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import time
from collections.abc import Iterator

import grpc
import pytest

from app.core.protos import predict_pb2, prediction_service_pb2_grpc, tensor_pb2, types_pb2
from tests.serverproc import ServerProcess

# Short enough for quick tests, long enough for a loaded 2-core machine to send a request.
HEADER_TIMEOUT_SECONDS = 2.0
BODY_TIMEOUT_SECONDS = 2.0
IDLE_TIMEOUT_SECONDS = 3.0
HANDSHAKE_TIMEOUT_SECONDS = 2.0


def server_args(config: pathlib.Path, *extra: str, transport: str = "grpcio") -> list[str]:
    return [
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        f"--grpc_implementation={transport}",
        f"--rest_header_timeout_seconds={HEADER_TIMEOUT_SECONDS}",
        f"--rest_body_timeout_seconds={BODY_TIMEOUT_SECONDS}",
        f"--rest_idle_timeout_seconds={IDLE_TIMEOUT_SECONDS}",
        f"--grpc_handshake_timeout_seconds={HANDSHAKE_TIMEOUT_SECONDS}",
        f"--grpc_idle_timeout_seconds={IDLE_TIMEOUT_SECONDS}",
        *extra,
    ]


def write_config(directory: pathlib.Path, base_path: pathlib.Path) -> pathlib.Path:
    config = directory / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "m" base_path: "{base_path}" model_platform: "tensorflow" }}\n'
        "}\n"
    )
    return config


@pytest.fixture(scope="module")
def server(model_zoo, tmp_path_factory, request) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """grpc.aio unless the module parametrizes `transport` (the codec is shared by both)."""
    transport = getattr(request, "param", "grpcio")
    tmp = tmp_path_factory.mktemp(f"adversarial-{transport}")
    config = write_config(tmp, model_zoo.base_path("half_plus_two"))
    proc = ServerProcess(server_args(config, transport=transport), tmp / "server.log")
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.grpc_port}",
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    try:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    finally:
        channel.close()


# --- what a legitimate client does ----------------------------------------------------------


def x_tensor(values: list[float]) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
    proto.tensor_shape.dim.add(size=len(values))
    proto.tensor_shape.dim.add(size=1)
    return proto


def legit_grpc_predict(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(x_tensor([1.0, 2.0]))
    response = stub.Predict(request, timeout=30, wait_for_ready=True)
    assert list(response.outputs["y"].float_val) == [2.5, 3.0]


def legit_rest_predict(port: int, timeout_seconds: float = 30.0) -> None:
    body = json.dumps({"instances": [[1.0], [2.0]]}).encode()
    status, reply = http_exchange(
        port,
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body,
        timeout_seconds,
    )
    assert status == 200, reply
    assert json.loads(reply) == {"predictions": [[2.5], [3.0]]}


# --- raw HTTP/1.1 -----------------------------------------------------------------------------


def connect(port: int, timeout_seconds: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_seconds)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one response with a Content-Length; (0, b"", b"") if the
    server closed without answering."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, b"", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), head, body


def error_of(body: bytes) -> str:
    """The message of TF Serving's REST error body, which must be exactly {"error": ...}."""
    payload = json.loads(body)
    assert set(payload) == {"error"}, payload
    return payload["error"]


def http_exchange(port: int, request: bytes, timeout_seconds: float = 30.0) -> tuple[int, bytes]:
    with connect(port, timeout_seconds) as sock:
        sock.sendall(request)
        status, _, body = read_response(sock)
        return status, body


def closed_by_peer(sock: socket.socket, within_seconds: float) -> bool:
    """Whether the server closes `sock` (EOF or reset) within the time; data is discarded."""
    deadline = time.monotonic() + within_seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True
    return False


# --- the gateway process ----------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def gateway_pid(server: ServerProcess) -> int:
    assert server.process is not None and server.process.poll() is None, server.log()
    return server.process.pid


def settle_rss(pid: int, baseline: int, slack_bytes: int, timeout_seconds: float = 20.0) -> int:
    """The gateway's RSS once it is within `slack_bytes` of `baseline` (or the last reading)."""
    deadline = time.monotonic() + timeout_seconds
    rss = rss_bytes(pid)
    while rss > baseline + slack_bytes and time.monotonic() < deadline:
        time.sleep(0.5)
        rss = rss_bytes(pid)
    return rss


@contextlib.contextmanager
def sockets_closed(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
