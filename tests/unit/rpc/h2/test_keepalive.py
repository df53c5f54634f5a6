"""app/rpc/h2/keepalive.py's Keepalive on its own: grpc core's ping-abuse arithmetic and the
keepalive PING's state, with explicit times (no loop, no socket)."""

from __future__ import annotations

import math

import pytest

from app.rpc.h2 import keepalive
from app.rpc.h2.keepalive import (
    KEEPALIVE_PAYLOAD,
    KEEPALIVE_TIMEOUT,
    PING_TIMEOUT,
    SEND_PING,
    WAIT,
    Keepalive,
)
from app.rpc.h2.limits import H2Limits

HOUR = 3600.0


def pings(policy: Keepalive, times: list[float], calls_open: bool = True) -> list[bool]:
    return [policy.ping_received(t, calls_open) for t in times]


def test_grpc_core_defaults() -> None:
    limits = H2Limits()
    assert (limits.keepalive_time_seconds, limits.keepalive_timeout_seconds) == (2 * HOUR, 20.0)
    assert limits.min_recv_ping_interval_without_data_seconds == 300.0
    assert limits.max_ping_strikes == 2
    assert limits.keepalive_permit_without_calls is False


def test_third_strike_closes() -> None:
    assert pings(Keepalive(H2Limits()), [0, 1, 2, 3, 4]) == [False, False, False, True, True]


def test_a_ping_exactly_one_interval_later_is_no_strike() -> None:
    assert not any(pings(Keepalive(H2Limits()), [300.0 * n for n in range(10)]))


def test_no_call_open_means_two_hours() -> None:
    assert pings(Keepalive(H2Limits()), [0, 400, 800, 1200], calls_open=False)[-1]
    assert not any(pings(Keepalive(H2Limits()), [0, 2 * HOUR, 4 * HOUR], calls_open=False))
    permitted = Keepalive(H2Limits(keepalive_permit_without_calls=True))
    assert not any(pings(permitted, [0, 400, 800, 1200], calls_open=False))


def test_strikes_are_not_forgiven_by_time_alone() -> None:
    policy = Keepalive(H2Limits())
    assert pings(policy, [0, 1, 2]) == [False, False, False]  # two strikes
    assert pings(policy, [1000, 1001]) == [False, True]  # 1000 s later: the third one


def test_reset_starts_over() -> None:
    policy = Keepalive(H2Limits())
    pings(policy, [0, 1, 2])
    policy.reset_strikes()
    assert pings(policy, [3, 4, 5, 6]) == [False, False, False, True]


def test_zero_strikes_never_closes() -> None:
    assert not any(pings(Keepalive(H2Limits(max_ping_strikes=0)), [0.001 * n for n in range(50)]))


def short(**fields: object) -> Keepalive:
    values: dict[str, object] = dict(keepalive_time_seconds=10.0, keepalive_timeout_seconds=2.0)
    values.update(fields)
    return Keepalive(H2Limits(**values))  # type: ignore[arg-type]


def test_ping_after_keepalive_time_of_silence_with_a_call_open() -> None:
    policy = short()
    assert policy.next_check_at(read_at=100.0) == 110.0
    assert policy.check(109.0, 100.0, calls_open=True) == WAIT
    assert policy.check(110.0, 100.0, calls_open=True) == SEND_PING
    assert policy.next_check_at(read_at=100.0) == 112.0  # the keepalive timeout


def test_no_ping_without_a_call_unless_permitted() -> None:
    policy = short()
    assert policy.check(110.0, 100.0, calls_open=False) == WAIT
    assert policy.next_check_at(read_at=100.0) == 120.0  # another keepalive time on
    assert short(keepalive_permit_without_calls=True).check(110.0, 100.0, False) == SEND_PING


def test_silence_after_the_ping_is_a_keepalive_timeout() -> None:
    policy = short()
    policy.check(110.0, 100.0, calls_open=True)
    assert policy.check(111.9, 100.0, calls_open=True) == WAIT
    assert policy.check(112.0, 100.0, calls_open=True) == KEEPALIVE_TIMEOUT


def test_bytes_but_no_ack_is_a_ping_timeout() -> None:
    policy = short()
    policy.check(110.0, 100.0, calls_open=True)
    read_at = 111.0  # the client sent something, not the ACK
    assert policy.next_check_at(read_at) == 110.0 + keepalive.PING_ACK_TIMEOUT_SECONDS
    assert policy.check(112.0, read_at, calls_open=True) == WAIT
    assert policy.check(170.0, read_at, calls_open=True) == PING_TIMEOUT


def test_the_ack_restarts_the_keepalive_clock() -> None:
    policy = short()
    policy.check(110.0, 100.0, calls_open=True)
    assert not policy.acked(b"whatever", 110.5)  # not our PING's
    assert policy.next_check_at(read_at=110.5) == 110.0 + keepalive.PING_ACK_TIMEOUT_SECONDS
    assert policy.acked(KEEPALIVE_PAYLOAD, 110.5)
    assert not policy.acked(KEEPALIVE_PAYLOAD, 110.6)  # answered already
    assert policy.next_check_at(read_at=110.5) == 120.5
    assert policy.check(120.5, 110.5, calls_open=True) == SEND_PING


@pytest.mark.parametrize("calls_open", [False, True])
def test_keepalive_time_zero_never_pings(calls_open: bool) -> None:
    policy = short(keepalive_time_seconds=0.0, keepalive_permit_without_calls=True)
    assert policy.next_check_at(read_at=0.0) == math.inf
    assert policy.check(10 * HOUR, 0.0, calls_open) == WAIT


# --- the flags -------------------------------------------------------------------------


def test_flags_reach_the_h2_limits() -> None:
    from app.rpc.server import h2_limits
    from app.settings.settings import load_settings

    limits = h2_limits(load_settings([
        "--model_base_path=/m", "--grpc_keepalive_time_seconds=60",
        "--grpc_keepalive_timeout_seconds=5", "--grpc_max_ping_strikes=0",
        "--grpc_min_recv_ping_interval_without_data_seconds=10",
        "--grpc_keepalive_permit_without_calls=true",
    ]))
    assert (limits.keepalive_time_seconds, limits.keepalive_timeout_seconds,
            limits.min_recv_ping_interval_without_data_seconds, limits.max_ping_strikes,
            limits.keepalive_permit_without_calls) == (60.0, 5.0, 10.0, 0, True)
    defaults = h2_limits(load_settings(["--model_base_path=/m"]))
    assert (defaults.keepalive_time_seconds, defaults.keepalive_timeout_seconds,
            defaults.min_recv_ping_interval_without_data_seconds, defaults.max_ping_strikes,
            defaults.keepalive_permit_without_calls) == (7200.0, 20.0, 300.0, 2, False)


@pytest.mark.parametrize("flag", [
    "--grpc_keepalive_time_seconds=-1", "--grpc_keepalive_timeout_seconds=0",
    "--grpc_min_recv_ping_interval_without_data_seconds=-1", "--grpc_max_ping_strikes=-1",
])
def test_flags_are_validated(flag: str) -> None:
    from app.settings.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=flag.split("=")[0]):
        load_settings(["--model_base_path=/m", flag])
