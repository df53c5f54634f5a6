"""grpc core's server keepalive and ping-abuse policy in tfgate's HTTP/2 gRPC transport.

What grpc core's chttp2 server does with its defaults (app/rpc/h2/keepalive.py has the
sources), checked on in-process GrpcH2Servers (tests/adversarial/test_h2_transport.py's
InProcess and toy_server) with the raw client (tests/adversarial/h2_client.py): PINGs
closer than allowed with no data from the server are strikes, and the strike past the
allowed ones gets GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"); the server's own keepalive
PING goes out after the keepalive time of silence on a connection with a call open, and an
unanswered one ends the connection. A real grpcio client with default options must not
notice any of it. Everything on 127.0.0.1, times in tenths of a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from app.rpc.h2 import frames as h2
from app.rpc.h2 import keepalive
from app.rpc.h2.limits import H2Limits
from tests.adversarial.h2_client import Frame, RawClient, grpc_message, request_fields
from tests.adversarial.test_h2_transport import InProcess, echo_ok, toy_server

__all__ = ["toy_server"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(60)

HOLD = "/adv.Toy/Hold"  # a streaming call that stays open (its handler sleeps)
ECHO = "/adv.Toy/Echo"
CALM = (h2.ENHANCE_YOUR_CALM, b"too_many_pings")
SHORT_SECONDS = 0.4  # a test-configured keepalive time / ping interval


@pytest.fixture
def short_policy(request: pytest.FixtureRequest) -> Iterator[InProcess]:
    """An in-process server whose keepalive and ping-interval numbers are tenths of a second;
    a test overrides fields with limits(...)."""
    fields: dict[str, object] = dict(
        keepalive_time_seconds=SHORT_SECONDS,
        keepalive_timeout_seconds=SHORT_SECONDS,
        min_recv_ping_interval_without_data_seconds=SHORT_SECONDS,
    )
    fields.update(getattr(request, "param", {}))
    served = InProcess(H2Limits(**fields))  # type: ignore[arg-type]
    try:
        yield served
    finally:
        served.close()


def limits(**fields: object) -> pytest.MarkDecorator:
    """H2Limits fields for the short_policy server of one test."""
    return pytest.mark.parametrize("short_policy", [fields], indirect=True, ids=[""])


def ping(raw: RawClient, payload: bytes) -> Frame | None:
    """One PING; its ACK, or the GOAWAY that came first (None: neither)."""
    raw.ping(payload)
    return raw.wait_for(lambda f: f.kind == h2.GOAWAY or (
        f.kind == h2.PING and bool(f.flags & h2.ACK) and f.payload == payload))


def goaway_of(frame: Frame | None) -> tuple[int, bytes] | None:
    if frame is None or frame.kind != h2.GOAWAY:
        return None
    return int.from_bytes(frame.payload[4:8], "big"), frame.payload[8:]


def struck_out_at(raw: RawClient, count: int, gap_seconds: float = 0.0) -> int | None:
    """Send up to `count` PINGs, each after the previous one's ACK; the number (from 1) of
    the one answered with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" right after its ACK (and
    then the connection closes), or None when all were simply ACKed."""
    for sent in range(1, count + 1):
        if sent > 1 and gap_seconds:
            time.sleep(gap_seconds)
        reply = ping(raw, b"ping%04d" % sent)
        assert reply is not None and reply.kind == h2.PING, f"PING {sent}: {reply}"
        # The server writes the ACK and its GOAWAY together: a GOAWAY follows at once.
        goaway = raw.wait_for(lambda f: f.kind == h2.GOAWAY, 0.05)
        if goaway is not None:
            assert goaway_of(goaway) == CALM
            assert raw.eof(5)
            return sent
    return None


def open_call(raw: RawClient, stream_id: int = 1) -> None:
    raw.headers(stream_id, request_fields(HOLD))


# --- the client's PINGs: grpc core's ping-abuse policy ---------------------------------


@pytest.mark.parametrize("with_call", [False, True], ids=["idle", "call open"])
def test_pings_with_no_data_between_get_too_many_pings(toy_server: InProcess,
                                                       with_call: bool) -> None:
    """grpc core's defaults (5 minutes, 2 strikes): the first PING is free, the next two are
    strikes, the third strike gets GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") after its
    ACK (grpcio 1.85's server answers the same four PINGs exactly so)."""
    with RawClient(toy_server.port) as raw:
        if with_call:
            open_call(raw)
        # The fourth PING: its ACK, then GOAWAY, then the connection closes.
        assert struck_out_at(raw, 6) == 4
    echo_ok(toy_server.port)


def test_a_response_from_the_server_resets_the_strikes(toy_server: InProcess) -> None:
    with RawClient(toy_server.port) as raw:
        assert struck_out_at(raw, 3) is None  # two strikes used
        raw.call(1, ECHO, b"data")  # HEADERS and DATA back: the count starts over
        assert raw.response(1).trailers["grpc-status"] == "0"
        assert struck_out_at(raw, 6) == 4  # one free PING and two strikes again


def test_window_updates_from_the_server_reset_the_strikes(toy_server: InProcess) -> None:
    """grpc core resets on WINDOW_UPDATE too: a client streaming a large request (and
    getting credit back) may ping as its transport likes."""
    with RawClient(toy_server.port) as raw:
        open_call(raw)  # Hold: never answers, so only WINDOW_UPDATEs come back
        message = grpc_message(bytes(512 << 10))
        for n in range(6):
            raw.send_raw(h2.frame(h2.DATA, 0, 1, message) * 2)
            update = raw.wait_for(lambda f: f.kind == h2.WINDOW_UPDATE and f.stream_id == 0)
            assert update is not None
            assert struck_out_at(raw, 2) is None, f"round {n}"  # else struck out in round 2


@limits(keepalive_time_seconds=0)
def test_pings_spaced_beyond_the_interval_are_fine(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        open_call(raw)
        assert struck_out_at(raw, 6, gap_seconds=SHORT_SECONDS + 0.1) is None
        # The same PINGs back to back: the interval is what made them fine.
        assert struck_out_at(raw, 6) == 3


@limits(keepalive_time_seconds=0)
def test_with_no_call_open_pings_must_be_two_hours_apart(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        assert struck_out_at(raw, 6, gap_seconds=SHORT_SECONDS + 0.1) == 4


@limits(keepalive_time_seconds=0, keepalive_permit_without_calls=True)
def test_permit_without_calls_holds_idle_pings_to_the_interval(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        assert struck_out_at(raw, 5, gap_seconds=SHORT_SECONDS + 0.1) is None
        assert struck_out_at(raw, 6) == 3


@limits(keepalive_time_seconds=0, max_ping_strikes=0)
def test_zero_strikes_never_closes(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        assert struck_out_at(raw, 20) is None


# --- the server's keepalive PINGs ------------------------------------------------------


def server_ping(raw: RawClient, timeout_seconds: float) -> Frame | None:
    """The server's next keepalive PING (not an ACK); None when none came in time."""
    return raw.wait_for(lambda f: f.kind == h2.PING and not f.flags & h2.ACK, timeout_seconds)


def test_keepalive_ping_unanswered_closes_the_connection(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        open_call(raw)
        silent_from = time.monotonic()
        pinged = server_ping(raw, 5)
        pinged_after = time.monotonic() - silent_from
        assert pinged is not None and pinged.payload == keepalive.KEEPALIVE_PAYLOAD
        assert SHORT_SECONDS - 0.05 <= pinged_after < SHORT_SECONDS + 1.0
        assert raw.goaway(5) == (h2.ENHANCE_YOUR_CALM, b"keepalive_timeout")
        closed_after = time.monotonic() - silent_from
        assert 2 * SHORT_SECONDS - 0.05 <= closed_after < 2 * SHORT_SECONDS + 1.5
        assert raw.eof(5)


def test_keepalive_ping_answered_keeps_the_connection(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        open_call(raw)
        for _ in range(4):  # four keepalive times, each PING answered
            pinged = server_ping(raw, 5)
            assert pinged is not None
            raw.ping(pinged.payload, ack=True)
        raw.call(3, ECHO, b"alive")
        assert raw.response(3).trailers["grpc-status"] == "0"
        assert not raw.closed


@limits(keepalive_timeout_seconds=5.0)
def test_after_the_ack_the_next_ping_is_one_keepalive_time_on(short_policy: InProcess) -> None:
    """Not at the ACK's deadline (the keepalive timeout, longer here): the clock restarts
    at the ACK, as grpc core's finish_keepalive_ping does."""
    with RawClient(short_policy.port) as raw:
        open_call(raw)
        for _ in range(3):
            pinged = server_ping(raw, 10)
            assert pinged is not None
            raw.ping(pinged.payload, ack=True)
            acked_at = time.monotonic()
            assert server_ping(raw, SHORT_SECONDS + 1.0) is not None, "no PING after the ACK"
            assert time.monotonic() - acked_at >= SHORT_SECONDS - 0.05
            raw.ping(pinged.payload, ack=True)
        assert not raw.closed


def test_no_keepalive_ping_while_no_call_is_open(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        assert server_ping(raw, 4 * SHORT_SECONDS) is None
        raw.call(1, ECHO, b"still open")
        assert raw.response(1).trailers["grpc-status"] == "0"


@limits(keepalive_permit_without_calls=True)
def test_permit_without_calls_pings_idle_connections(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        assert server_ping(raw, 5) is not None
        assert raw.goaway(5) == (h2.ENHANCE_YOUR_CALM, b"keepalive_timeout")


def test_frames_from_the_client_postpone_the_keepalive_ping(short_policy: InProcess) -> None:
    with RawClient(short_policy.port) as raw:
        open_call(raw)
        busy_until = time.monotonic() + 4 * SHORT_SECONDS
        while time.monotonic() < busy_until:  # a frame every quarter keepalive time
            raw.send(h2.WINDOW_UPDATE, 0, 0, h2.u32(1))
            assert server_ping(raw, SHORT_SECONDS / 4) is None
        assert server_ping(raw, 5) is not None


@limits(keepalive_timeout_seconds=0.2)
def test_unacked_keepalive_ping_while_the_client_sends_is_a_ping_timeout(
    short_policy: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes from the client show it is alive, so the keepalive timeout does not end the
    connection; its PING's ACK still must come within grpc core's ping timeout (60 s,
    a second here)."""
    monkeypatch.setattr(keepalive, "PING_ACK_TIMEOUT_SECONDS", 1.0)
    with RawClient(short_policy.port) as raw:
        open_call(raw)
        assert server_ping(raw, 5) is not None
        pinged_at = time.monotonic()
        goaway = None
        while goaway is None and time.monotonic() < pinged_at + 5:
            raw.send(h2.WINDOW_UPDATE, 0, 0, h2.u32(1))
            goaway = goaway_of(raw.wait_for(lambda f: f.kind == h2.GOAWAY, 0.05))
        assert goaway == (h2.ENHANCE_YOUR_CALM, b"ping_timeout")
        assert 1.0 - 0.05 <= time.monotonic() - pinged_at < 2.0


# --- a real client ---------------------------------------------------------------------


def test_grpcio_client_with_default_options_is_never_struck(
    short_policy: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc core's client sends a BDP PING at connect and then as response data arrives,
    mostly after its call has ended (so under the 2-hour rule); only the data the server
    sent in between keeps those from being strikes. Against the policy (2 strikes, the
    test's short keepalive) it must never be struck out: every call succeeds and the one
    connection is never closed."""
    received: list[bool] = []
    original = keepalive.Keepalive.ping_received

    def counted(self: keepalive.Keepalive, now: float, calls_open: bool) -> bool:
        verdict = original(self, now, calls_open)
        received.append(verdict)
        return verdict

    monkeypatch.setattr(keepalive.Keepalive, "ping_received", counted)
    with grpc.insecure_channel(f"127.0.0.1:{short_policy.port}") as channel:
        echo = channel.unary_unary(ECHO)
        chat = channel.stream_stream("/adv.Toy/Chat")
        assert echo(b"first", timeout=10) == b"first"
        connections = short_policy.run(_connection_ids(short_policy))
        assert len(connections) == 1
        for n in range(40):  # 3 MiB each way (grpc clients take 4): more BDP PINGs
            payload = bytes(3 << 20) + b"%d" % n
            assert echo(payload, timeout=10) == payload
        replies = list(chat(iter([bytes(64 << 10)] * 64), timeout=20))
        assert len(replies) == 64
        time.sleep(3 * SHORT_SECONDS)  # idle now, keepalive times pass
        assert echo(b"after", timeout=10) == b"after"
        # The one connection served it all: the server never closed it.
        assert short_policy.run(_connection_ids(short_policy)) == connections
    # More than the strikes allowed: a policy that struck them would have closed it.
    assert len(received) > 3, f"{len(received)} PINGs from the client: too few to tell"
    assert not any(received)


async def _connection_ids(served: InProcess) -> set[int]:
    return {id(connection) for connection in served.server.connections}
