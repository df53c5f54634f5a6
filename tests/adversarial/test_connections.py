"""Row 13 of issue 19: idle TCP connections cannot lock new clients out of either port.

3,000 sockets that never send a byte go to the REST port and to the gRPC port (grpc.aio) of
a server whose caps are 300 connections per port. The gateway's open file descriptors stay
near baseline + caps, a new legitimate REST and gRPC client is served while the sockets are
held, and the server closes the idle sockets itself (header / handshake / idle timeouts).
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator

import grpc
import pytest

from app.core.protos import prediction_service_pb2_grpc
from tests.adversarial.conftest import (
    BODY_TIMEOUT_SECONDS,
    HANDSHAKE_TIMEOUT_SECONDS,
    HEADER_TIMEOUT_SECONDS,
    IDLE_TIMEOUT_SECONDS,
    closed_by_peer,
    connect,
    error_of,
    gateway_pid,
    legit_grpc_predict,
    legit_rest_predict,
    open_fds,
    read_response,
    server_args,
    sockets_closed,
    write_config,
)
from tests.serverproc import ServerProcess

ATTACK_SOCKETS = 3000
CAP = 300
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def capped(model_zoo, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("capped")
    config = write_config(tmp, model_zoo.base_path("half_plus_two"))
    args = server_args(config, f"--rest_max_connections={CAP}", f"--grpc_max_connections={CAP}")
    proc = ServerProcess(args, tmp / "server.log")
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors() -> None:
    """The test process holds 3,000 sockets (plus pytest's own files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ATTACK_SOCKETS + 1024
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@contextlib.contextmanager
def grpc_stub(port: int) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)],
    )
    try:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    finally:
        channel.close()


def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connected sockets that send nothing (refused or reset ones are skipped)."""
    socks = []
    deadline = time.monotonic() + 60
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        with contextlib.suppress(OSError):
            socks.append(connect(port, timeout_seconds=5))
    return socks


def wait_fds_at_most(pid: int, limit: int, timeout_seconds: float) -> int:
    deadline = time.monotonic() + timeout_seconds
    count = open_fds(pid)
    while count > limit and time.monotonic() < deadline:
        time.sleep(0.2)
        count = open_fds(pid)
    return count


def test_idle_sockets_on_the_rest_port(capped: ServerProcess) -> None:
    pid = gateway_pid(capped)
    legit_rest_predict(capped.rest_port)
    baseline = open_fds(pid)
    with sockets_closed(open_idle(capped.rest_port, ATTACK_SOCKETS)) as socks:
        assert len(socks) > CAP
        # New clients are served while the idle sockets are held (each evicts an idle one).
        for _ in range(5):
            legit_rest_predict(capped.rest_port, timeout_seconds=10)
        assert open_fds(pid) <= baseline + CAP + 20
        # Every idle socket is closed by the server, evicted or timed out.
        time.sleep(HEADER_TIMEOUT_SECONDS + 1)
        assert all(closed_by_peer(sock, 5) for sock in socks[-50:])
    assert wait_fds_at_most(pid, baseline + 5, 10) <= baseline + 5
    legit_rest_predict(capped.rest_port)


def test_idle_sockets_on_the_grpc_port(capped: ServerProcess) -> None:
    pid = gateway_pid(capped)
    with grpc_stub(capped.grpc_port) as stub:
        legit_grpc_predict(stub)
    baseline = open_fds(pid)
    with sockets_closed(open_idle(capped.grpc_port, ATTACK_SOCKETS)) as socks:
        assert len(socks) > CAP
        # Past the cap grpc core closes a connection at once: the gateway's fds stay bounded.
        assert wait_fds_at_most(pid, baseline + CAP + 20, 10) <= baseline + CAP + 20
        # The held ones fail the handshake timeout, and a new client gets in (its channel
        # retries while the cap is full).
        started = time.monotonic()
        with grpc_stub(capped.grpc_port) as stub:
            legit_grpc_predict(stub)
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT_SECONDS + 15
        legit_rest_predict(capped.rest_port)
        assert all(closed_by_peer(sock, HANDSHAKE_TIMEOUT_SECONDS + 5) for sock in socks[:50])
    assert wait_fds_at_most(pid, baseline + 5, 10) <= baseline + 5


def test_grpc_connection_without_calls_is_closed_when_idle(capped: ServerProcess) -> None:
    """HTTP/2 handshake done, then no call: max_connection_idle sends GOAWAY and closes."""
    with connect(capped.grpc_port) as sock:
        sock.sendall(H2_PREFACE + EMPTY_SETTINGS)
        started = time.monotonic()
        assert closed_by_peer(sock, IDLE_TIMEOUT_SECONDS + 10)
        assert time.monotonic() - started > HANDSHAKE_TIMEOUT_SECONDS / 2


def test_rest_keep_alive_connection_is_closed_when_idle(capped: ServerProcess) -> None:
    with connect(capped.rest_port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_by_peer(sock, IDLE_TIMEOUT_SECONDS + 5)


def test_rest_cap_full_of_busy_requests_answers_503_until_they_time_out(
    capped: ServerProcess,
) -> None:
    """Every slot holds a request whose body never finishes: nothing idle to replace, so a
    newcomer gets 503 {"error"}; the body timeout then frees the slots."""
    busy = open_idle(capped.rest_port, CAP)
    with sockets_closed(busy):
        for sock in busy:
            with contextlib.suppress(OSError):
                sock.sendall(
                    b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 100\r\n\r\n{"
                )
        time.sleep(0.5)
        with connect(capped.rest_port) as sock:
            sock.settimeout(10)
            status, head, body = read_response(sock)
        assert status == 503, head
        assert error_of(body) == "Too many connections"
        time.sleep(BODY_TIMEOUT_SECONDS + 1)
        legit_rest_predict(capped.rest_port, timeout_seconds=10)
