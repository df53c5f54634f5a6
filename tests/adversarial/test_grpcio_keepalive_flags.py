"""The keepalive and ping-abuse flags reach grpc.aio too (--grpc_implementation=grpcio): the
options rpc/server.py builds for it carry them as grpc core's channel arguments, so the flags
mean the same on both transports. Checked on a grpc core server built with exactly those
options, with the raw HTTP/2 client of tests/adversarial/h2_client.py; 127.0.0.1 only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from app.rpc import server as rpc_server
from app.rpc.h2 import frames as h2
from app.settings.settings import load_settings
from tests.adversarial.h2_client import RawClient
from tests.adversarial.test_h2_keepalive import server_ping, struck_out_at

pytestmark = pytest.mark.timeout(60)

BASE_FLAGS = ["--model_base_path=/models/m", "--grpc_implementation=grpcio"]


@pytest.fixture
def grpc_core_server() -> Iterator[Callable[..., int]]:
    """start(*flags) -> the port of a grpc core server with server_options() of those flags."""
    started: list[grpc.Server] = []

    def start(*flags: str) -> int:
        settings = load_settings([*BASE_FLAGS, *flags], environ={})
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=1),
            options=rpc_server.server_options(settings),
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append(server)
        return port

    yield start
    for server in started:
        server.stop(grace=None)


def test_default_flags_are_grpc_cores_defaults(grpc_core_server: Callable[..., int]) -> None:
    """Left alone, nothing changes: the fourth PING with no data between is struck out."""
    with RawClient(grpc_core_server()) as raw:
        assert struck_out_at(raw, 6) == 4


def test_zero_ping_strikes_never_closes(grpc_core_server: Callable[..., int]) -> None:
    with RawClient(grpc_core_server("--grpc_max_ping_strikes=0")) as raw:
        assert struck_out_at(raw, 12) is None


def test_a_short_ping_interval_allows_pings_that_far_apart(
    grpc_core_server: Callable[..., int],
) -> None:
    port = grpc_core_server(
        "--grpc_min_recv_ping_interval_without_data_seconds=0.2",
        "--grpc_keepalive_permit_without_calls=true",
    )
    with RawClient(port) as raw:
        assert struck_out_at(raw, 5, gap_seconds=0.35) is None


def test_server_keepalive_time_and_permit_without_calls(
    grpc_core_server: Callable[..., int],
) -> None:
    """With a short keepalive time and pings allowed with no call open, the server pings an
    idle connection; with the defaults (2 hours, not without calls) it does not."""
    with RawClient(grpc_core_server()) as raw:
        assert server_ping(raw, 1.0) is None
    port = grpc_core_server(
        "--grpc_keepalive_time_seconds=0.3", "--grpc_keepalive_permit_without_calls=true"
    )
    with RawClient(port) as raw:
        pinged = server_ping(raw, 5.0)
        assert pinged is not None and pinged.kind == h2.PING


def test_keepalive_options_map_every_flag() -> None:
    settings = load_settings(
        [
            *BASE_FLAGS,
            "--grpc_keepalive_time_seconds=0",
            "--grpc_keepalive_timeout_seconds=1.5",
            "--grpc_min_recv_ping_interval_without_data_seconds=0",
            "--grpc_max_ping_strikes=7",
            "--grpc_keepalive_permit_without_calls=true",
        ],
        environ={},
    )
    assert rpc_server.keepalive_options(settings) == {
        "grpc.keepalive_time_ms": rpc_server.INT32_MAX,  # 0 = never
        "grpc.keepalive_timeout_ms": 1500,
        "grpc.http2.min_ping_interval_without_data_ms": 0,
        "grpc.http2.max_ping_strikes": 7,
        "grpc.keepalive_permit_without_calls": 1,
    }


def test_channel_arguments_still_win() -> None:
    settings = load_settings(
        [*BASE_FLAGS, "--grpc_max_ping_strikes=7",
         "--grpc_channel_arguments=grpc.http2.max_ping_strikes=3"],
        environ={},
    )
    assert dict(rpc_server.server_options(settings))["grpc.http2.max_ping_strikes"] == 3
