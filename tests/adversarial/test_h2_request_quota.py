"""The h2 transport's server-wide quota on buffered request bytes (app/rpc/h2/quota.py,
--grpc_max_buffered_request_bytes).

In process first (an InProcess GrpcH2Server from test_h2_transport.py, two listeners, a 3 MiB
quota): the count follows every byte the transport holds (partly received unary messages,
queued streaming messages) and gives it back on every path (message complete, handler takes
it, client RST_STREAM, connection lost, refusal), and a call past the quota gets
RESOURCE_EXHAUSTED while the rest carries on. Then a real `tensorflow_model_server` with a
160 MiB quota, attacked by many connections half-sending large Predicts: its RSS stays tied
to the quota, late calls are refused, and the same call succeeds from a fresh client once
the attackers are gone. Everything on 127.0.0.1, bounded in time and count.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest

from app.core.protos import predict_pb2, prediction_service_pb2_grpc
from app.rpc.h2 import frame_quota
from app.rpc.h2 import frames as h2
from app.rpc.h2.limits import CONNECTION_WINDOW_BYTES, H2Limits
from tests.adversarial.conftest import settle_rss
from tests.adversarial.h2_client import (
    RawClient,
    Response,
    grpc_message,
    request_fields,
    vm_rss_bytes,
)
from tests.adversarial.test_h2_transport import (
    RSS_SLACK_BYTES,
    FlowControlledSender,
    InProcess,
    Legit,
    PeakRss,
    figures,
)
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(180)

KiB = 1 << 10
MiB = 1 << 20
RESOURCE_EXHAUSTED = str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
DIGEST = "/adv.Toy/Digest"  # unary: sha256 of the request (a short reply)
HOLD = "/adv.Toy/Hold"  # streaming, never reads its requests
CHAT = "/adv.Toy/Chat"  # streaming, echoes each request
PARK = "/adv.Quota/Park"  # unary, keeps its request for a minute (or until cancelled)


# --- in process: the accounting --------------------------------------------------------

QUOTA_BYTES = 3 * MiB
LIMIT_BYTES = MiB  # the receive limit


async def park(request: bytes, context: object) -> bytes:
    await asyncio.sleep(60)
    return b""


async def spill(requests: object, context: object) -> bytes:
    """Client streaming, one reply: never reads its requests and answers more than a client's
    default 64 KiB window, so its trailers wait for credit the client may never give."""
    await asyncio.sleep(0.3)  # the client's messages are queued by then
    return bytes(200 * KiB)


@pytest.fixture(scope="module")
def quota_server() -> Iterator[InProcess]:
    served = InProcess(H2Limits(max_receive_message_bytes=LIMIT_BYTES,
                                max_buffered_request_bytes=QUOTA_BYTES))
    try:
        served.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "adv.Quota", {"Park": grpc.unary_unary_rpc_method_handler(park),
                          "Spill": grpc.stream_unary_rpc_method_handler(spill)})])
        served.run(served.server.listen("127.0.0.1:0", None))  # one quota for both listeners
        yield served
    finally:
        served.close()


def second_port(served: InProcess) -> int:
    return served.server.listeners[1].sockets[0].getsockname()[1]


def counts(served: InProcess) -> tuple[int, int]:
    """(the quota's count, the sum of what the open calls hold in it)."""
    async def read() -> tuple[int, int]:
        calls = [c for conn in served.server.connections for c in conn.calls.values()]
        return served.server.request_quota.held_bytes, sum(c.quota_bytes for c in calls)
    return served.run(read())


def frames_held(served: InProcess, expected: int, timeout_seconds: float = 5.0) -> int:
    """The incomplete-frame quota's count once it reads `expected` (or the last reading); the
    connections' shares always add up to it."""
    async def read() -> tuple[int, int]:
        shares = sum(conn.partial_frame_bytes for conn in served.server.connections)
        return served.server.frame_quota.held_bytes, shares
    deadline = time.monotonic() + timeout_seconds
    while True:
        held, shares = served.run(read())
        assert held == shares, (held, shares)
        if held == expected or time.monotonic() > deadline:
            return held
        time.sleep(0.02)


async def _dropped(served: InProcess) -> int:
    return served.server.heap_trim.dropped_bytes


def dropped_bytes(served: InProcess, monkeypatch: pytest.MonkeyPatch) -> int:
    """What the server's heap trim (app/core/heap_trim.py) has been told was dropped unserved
    since its last trim; the test keeps it from trimming (which would reset the count)."""
    monkeypatch.setattr(served.server.heap_trim, "after_bytes", 1 << 62)
    return served.run(_dropped(served))


def wait_dropped(served: InProcess, expected: int, timeout_seconds: float = 5.0) -> int:
    """dropped_bytes() once it reads `expected` (or the last reading)."""
    deadline = time.monotonic() + timeout_seconds
    while (dropped := served.run(_dropped(served))) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return dropped


def wait_held(served: InProcess, expected: int, timeout_seconds: float = 5.0) -> int:
    """The quota's count once it reads `expected` (or the last reading); the open calls'
    shares always add up to it."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        held, shares = counts(served)
        assert held == shares, (held, shares)
        if held == expected or time.monotonic() > deadline:
            return held
        time.sleep(0.02)


async def _open_calls(served: InProcess) -> int:
    return sum(len(conn.calls) for conn in served.server.connections)


async def _windows(served: InProcess) -> set[int]:
    """The connections' receive windows, each with the credit it has yet to send back."""
    return {conn.receive_window + conn.granted for conn in served.server.connections}


def start_unary(raw: RawClient, stream_id: int, body_bytes: int, sent_bytes: int) -> int:
    """A unary Digest call declaring a `body_bytes` message, of which the first `sent_bytes`
    are sent (no END_STREAM); returns the bytes sent, prefix included."""
    raw.headers(stream_id, request_fields(DIGEST))
    raw.send(h2.DATA, 0, stream_id, b"\x00" + body_bytes.to_bytes(4, "big") + bytes(sent_bytes))
    return 5 + sent_bytes


def refused(response: Response, held_bytes: int) -> None:
    trailers = response.trailers
    assert trailers["grpc-status"] == RESOURCE_EXHAUSTED, trailers
    assert trailers["grpc-message"] == (
        f"The server's request buffer is full ({held_bytes} bytes held, quota {QUOTA_BYTES}): "
        "try again later")


def test_unary_bytes_count_until_the_message_is_complete(quota_server: InProcess) -> None:
    with RawClient(quota_server.port) as raw:
        held = start_unary(raw, 1, 900 * KiB, 400 * KiB)
        assert wait_held(quota_server, held) == held
        raw.send(h2.DATA, 0, 1, bytes(300 * KiB))
        held += 300 * KiB
        assert wait_held(quota_server, held) == held
        raw.send(h2.DATA, h2.END_STREAM, 1, bytes(200 * KiB))  # complete: handed over
        response = raw.response(1)
        assert response.trailers["grpc-status"] == "0"
        assert wait_held(quota_server, 0) == 0
        # Handed to a handler that keeps it: no longer the transport's, while the call runs.
        raw.headers(3, request_fields(PARK))
        raw.send(h2.DATA, 0, 3, b"\x00" + (900 * KiB).to_bytes(4, "big") + bytes(600 * KiB))
        assert wait_held(quota_server, 5 + 600 * KiB) == 5 + 600 * KiB
        raw.send(h2.DATA, h2.END_STREAM, 3, bytes(300 * KiB))
        assert wait_held(quota_server, 0) == 0
        assert quota_server.run(_open_calls(quota_server)) == 1  # Park still has it
        raw.send(h2.RST_STREAM, 0, 3, h2.u32(h2.CANCEL))


def test_streaming_messages_count_until_the_handler_takes_them(quota_server: InProcess) -> None:
    message = grpc_message(bytes(100 * KiB))
    with RawClient(quota_server.port) as raw:
        raw.headers(1, request_fields(HOLD))  # never takes one
        for _ in range(5):
            raw.send(h2.DATA, 0, 1, message)
        raw.send(h2.DATA, 0, 1, message[:1000])  # and a partial one in the stream's body
        assert wait_held(quota_server, 5 * len(message) + 1000) == 5 * len(message) + 1000
        raw.send(h2.RST_STREAM, 0, 1, h2.u32(h2.CANCEL))
        assert wait_held(quota_server, 0) == 0
    # Chat takes each message and echoes it: once it has, nothing stays counted though
    # the call goes on.
    with RawClient(quota_server.port, {h2.SETTINGS_INITIAL_WINDOW_SIZE: h2.MAX_WINDOW}) as raw:
        raw.send(h2.WINDOW_UPDATE, 0, 0, h2.u32(h2.MAX_WINDOW - h2.DEFAULT_WINDOW))
        raw.headers(1, request_fields(CHAT))
        for _ in range(10):
            raw.send(h2.DATA, 0, 1, message)
        echoed = 0
        while echoed < 10 * len(message):
            frame = raw.next_frame()
            assert frame is not None, f"{echoed} bytes echoed"
            echoed += len(frame.payload) if frame.kind == h2.DATA else 0
        assert wait_held(quota_server, 0) == 0
        assert quota_server.run(_open_calls(quota_server)) == 1
        raw.send(h2.DATA, h2.END_STREAM, 1, b"")
        assert raw.response(1).trailers["grpc-status"] == "0"


def test_a_client_reset_gives_the_bytes_back(quota_server: InProcess) -> None:
    with RawClient(quota_server.port) as raw:
        first = start_unary(raw, 1, 900 * KiB, 500 * KiB)
        second = start_unary(raw, 3, 900 * KiB, 200 * KiB)
        assert wait_held(quota_server, first + second) == first + second
        raw.send(h2.RST_STREAM, 0, 1, h2.u32(h2.CANCEL))
        assert wait_held(quota_server, second) == second
        raw.send(h2.RST_STREAM, 0, 3, h2.u32(h2.CANCEL))
        assert wait_held(quota_server, 0) == 0
        raw.call(5, DIGEST, b"after")  # the connection carries on
        assert raw.response(5).trailers["grpc-status"] == "0"


def test_a_lost_connection_gives_the_bytes_back(quota_server: InProcess,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """...to the quota, and they count towards the next heap trim."""
    dropped_before = dropped_bytes(quota_server, monkeypatch)
    raw = RawClient(quota_server.port)
    try:
        held = start_unary(raw, 1, 900 * KiB, 600 * KiB)
        raw.headers(3, request_fields(HOLD))
        raw.send(h2.DATA, 0, 3, grpc_message(bytes(300 * KiB)) * 2)
        held += 2 * (5 + 300 * KiB)
        assert wait_held(quota_server, held) == held
    finally:
        raw.close()
    assert wait_held(quota_server, 0) == 0
    assert wait_dropped(quota_server, dropped_before + held) == dropped_before + held


def test_a_unary_call_past_the_quota_is_resource_exhausted(quota_server: InProcess) -> None:
    """Three calls on one listener hold 2.6 MiB of the 3 MiB quota; a call on the other
    listener that passes it is refused with its bytes released at once, its late DATA is
    dropped (and credited: 70 MiB of it, past the 64 MiB connection window), and everyone
    else carries on."""
    refusals_before = quota_server.server.request_quota.refused_calls
    with RawClient(quota_server.port) as holder, RawClient(second_port(quota_server)) as late:
        held = sum(start_unary(holder, stream_id, 900 * KiB, 900 * KiB - 100)
                   for stream_id in (1, 3, 5))
        assert wait_held(quota_server, held) == held
        taken = start_unary(late, 1, 900 * KiB, 200 * KiB)  # fits
        assert wait_held(quota_server, held + taken) == held + taken
        late.send(h2.DATA, 0, 1, bytes(300 * KiB))  # does not: the call fails
        refused(late.response(1), held + taken)
        assert wait_held(quota_server, held) == held  # its 200 KiB are given back
        for _ in range(70):  # sent before the client saw the refusal: dropped
            late.send(h2.DATA, 0, 1, bytes(MiB))
        late.call(3, DIGEST, b"same connection")
        assert late.response(3, 20).trailers["grpc-status"] == "0"
        for stream_id in (1, 3, 5):  # the holders finish and are served
            holder.send(h2.DATA, h2.END_STREAM, stream_id, bytes(100))
            assert holder.response(stream_id).trailers["grpc-status"] == "0"
        assert wait_held(quota_server, 0) == 0
        # Every byte either connection sent, refused or dropped ones too, is credited back.
        assert quota_server.run(_windows(quota_server)) == {CONNECTION_WINDOW_BYTES}
    assert quota_server.server.request_quota.refused_calls == refusals_before + 1
    # With the room back, the same call from a fresh connection is served.
    with RawClient(second_port(quota_server)) as fresh:
        start_unary(fresh, 1, 900 * KiB, 500 * KiB)
        fresh.send(h2.DATA, h2.END_STREAM, 1, bytes(400 * KiB))
        assert fresh.response(1).trailers["grpc-status"] == "0"
    assert wait_held(quota_server, 0) == 0


def frame_head(stream_id: int = 1) -> bytes:
    """The 9-byte header of a 1 MiB DATA frame (whose payload never all comes)."""
    return MiB.to_bytes(3, "big") + bytes([h2.DATA, 0]) + stream_id.to_bytes(4, "big")


def test_incomplete_frames_count_in_their_own_quota(quota_server: InProcess,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each connection trickles one large DATA frame and never finishes it: the bytes waiting
    in the read buffers count in the frame quota (an eighth of the request quota, but at
    least four of the largest frames: 4 x (1 MiB + 9) here), not in the request quota. With
    it full and no frame stalled long enough, the connection that needs room is closed with
    ENHANCE_YOUR_CALM; once the others have stalled, the oldest is closed to make room
    instead. Closing them all gives everything back, and their frames count towards the
    next heap trim."""
    monkeypatch.setattr(frame_quota, "STALLED_FRAME_SECONDS", 0.5)
    dropped_before = dropped_bytes(quota_server, monkeypatch)
    assert quota_server.server.frame_quota.limit_bytes == 4 * (MiB + h2.FRAME_HEADER_BYTES)
    closed_before = quota_server.server.frame_quota.closed
    piece = frame_head() + bytes(1000 * KiB)
    clients = [RawClient(quota_server.port) for _ in range(6)]
    try:
        for number, raw in enumerate(clients[:4], 1):
            raw.send_raw(piece)
            assert frames_held(quota_server, number * len(piece)) == number * len(piece)
        clients[4].send_raw(piece)  # no room, and no frame has stalled for 0.5 s yet
        assert clients[4].goaway_code() == h2.ENHANCE_YOUR_CALM
        assert frames_held(quota_server, 4 * len(piece)) == 4 * len(piece)
        assert wait_held(quota_server, 0) == 0  # the request quota is not touched
        time.sleep(0.6)  # now all four have stalled: the oldest makes room
        clients[5].send_raw(piece)
        assert clients[0].goaway_code() == h2.ENHANCE_YOUR_CALM
        assert frames_held(quota_server, 4 * len(piece)) == 4 * len(piece)
        assert quota_server.server.frame_quota.closed == closed_before + 2
    finally:
        for raw in clients:
            raw.close()
    assert frames_held(quota_server, 0) == 0
    # five frames were held and dropped (the one refused room never was held)
    dropped = dropped_before + 5 * len(piece)
    assert wait_dropped(quota_server, dropped) == dropped
    with RawClient(quota_server.port) as raw:  # a fresh client is served
        raw.call(1, DIGEST, grpc_message(b"ok"))
        assert raw.response(1).trailers["grpc-status"] == "0"
    # A frame that completes moves its bytes to its call: nothing stays in the frame quota.
    with RawClient(quota_server.port) as raw:
        raw.headers(1, request_fields(DIGEST))
        data = h2.frame(h2.DATA, h2.END_STREAM, 1, grpc_message(bytes(200 * KiB)))
        raw.send_raw(data[:150 * KiB])
        assert frames_held(quota_server, 150 * KiB) == 150 * KiB
        raw.send_raw(data[150 * KiB:])
        assert raw.response(1).trailers["grpc-status"] == "0"
        assert frames_held(quota_server, 0) == 0


def test_a_frame_still_arriving_is_not_stalled_however_long_the_upload(
    quota_server: InProcess, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An incomplete frame's age counts from its own first bytes: a connection whose reads
    keep completing frames (an upload in progress) is not the one evicted, though it has
    had an incomplete frame in its buffer longer than the connections that sit on theirs."""
    monkeypatch.setattr(frame_quota, "STALLED_FRAME_SECONDS", 0.3)
    piece = frame_head() + bytes(1000 * KiB)
    frames = [h2.frame(h2.DATA, 0, 1, grpc_message(bytes(200 * KiB - 5))) for _ in range(2)]
    half = 100 * KiB
    uploader = RawClient(quota_server.port)
    stalled = [RawClient(quota_server.port) for _ in range(3)]
    newcomer = RawClient(quota_server.port)
    try:
        uploader.headers(1, request_fields(HOLD))
        uploader.send_raw(frames[0][:half])  # the oldest incomplete frame...
        time.sleep(0.1)
        for raw in stalled:
            raw.send_raw(piece)
        time.sleep(0.4)
        uploader.send_raw(frames[0][half:] + frames[1][:half])  # ...completes; a new one begins
        held = 3 * len(piece) + half
        assert frames_held(quota_server, held) == held
        newcomer.send_raw(piece)  # no room: the oldest stalled frame's connection goes
        assert stalled[0].goaway_code() == h2.ENHANCE_YOUR_CALM
        assert uploader.goaway_code(0.3) is None
        uploader.send_raw(frames[1][half:])
        held = 3 * len(piece)  # two stalled, the newcomer
        assert frames_held(quota_server, held) == held
    finally:
        for raw in (uploader, *stalled, newcomer):
            raw.close()
    assert frames_held(quota_server, 0) == 0
    assert wait_held(quota_server, 0) == 0


def test_an_ended_call_gives_its_bytes_back_before_its_reply_is_written(
    quota_server: InProcess,
) -> None:
    """A client-streaming handler that never read its queued messages ends while its reply
    waits for window credit the client withholds: the messages leave the quota when the call
    ends, not when (if ever) the reply has been written."""
    message = grpc_message(bytes(100 * KiB))
    with RawClient(quota_server.port) as raw:  # never reads, so never sends WINDOW_UPDATE
        raw.headers(1, request_fields("/adv.Quota/Spill"))
        raw.send(h2.DATA, 0, 1, message)
        raw.send(h2.DATA, 0, 1, message)
        assert wait_held(quota_server, 2 * len(message), 2.0) == 2 * len(message)
        assert wait_held(quota_server, 0) == 0  # Spill returned after 0.3 s
        assert quota_server.run(_open_calls(quota_server)) == 1  # its reply is still queued


def test_a_streaming_call_past_the_quota_is_refused_and_its_queue_freed(
    quota_server: InProcess,
) -> None:
    message = grpc_message(bytes(500 * KiB))
    with RawClient(quota_server.port) as raw:
        raw.headers(1, request_fields(HOLD))
        for _ in range(6):  # 6 x 500 KiB queued (Hold never takes them): within 3 MiB
            raw.send(h2.DATA, 0, 1, message)
        assert wait_held(quota_server, 6 * len(message)) == 6 * len(message)
        raw.send(h2.DATA, 0, 1, message)  # the seventh passes the quota
        refused(raw.response(1), 6 * len(message))
        assert wait_held(quota_server, 0) == 0
        raw.call(3, DIGEST, b"next")
        assert raw.response(3).trailers["grpc-status"] == "0"


# --- a real server under attack --------------------------------------------------------

SERVER_QUOTA_BYTES = 160 * MiB  # the receive limit (68 MiB) + 64 MiB, and some more
DECLARED_BYTES = 60 * MiB  # each attacking call's message, within the receive limit
ATTACK_CONNECTIONS = 6
STREAMS_PER_CONNECTION = 2  # 120 MiB per connection: within its own unary buffer budget
LARGE_TENSOR_BYTES = 56 * MiB  # a legitimate Predict too large for what the attack leaves


@pytest.fixture(scope="module")
def gateway(model_zoo, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("adversarial_h2_quota")
    proc = ServerProcess(
        [
            "--model_name=hpt",
            f"--model_base_path={model_zoo.base_path('half_plus_two')}",
            "--grpc_implementation=h2",
            f"--grpc_max_buffered_request_bytes={SERVER_QUOTA_BYTES}",
            "--file_system_poll_wait_seconds=0",
        ],
        tmp / "server.log",
    )
    try:
        proc.start()
        with Legit(proc.grpc_port) as legit:
            legit.assert_served(10)  # warm: the first calls load what later ones reuse
        yield proc
    finally:
        proc.stop()


class Attacker(FlowControlledSender):
    """Half-sends DECLARED_BYTES-message Predicts on its streams within the server's windows
    (as FlowControlledSender does), and notes which streams the server answered (refused)."""

    def __init__(self, port: int) -> None:
        super().__init__(RawClient(port, timeout_seconds=60))
        self.sent: dict[int, int] = {}

    def start(self, streams: list[int]) -> None:
        while self.absorb(0.5):  # the server's SETTINGS and first WINDOW_UPDATE
            pass
        for stream_id in streams:
            self.open(stream_id)
            self.raw.send(h2.DATA, 0, stream_id, b"\x00" + DECLARED_BYTES.to_bytes(4, "big"))
            self.connection_window -= 5
            self.windows[stream_id] -= 5
            self.sent[stream_id] = 0

    def live(self) -> list[int]:
        """Streams neither answered nor sent up to their last byte (never sent)."""
        return [s for s, n in self.sent.items()
                if s not in self.answers and n < DECLARED_BYTES - 1]

    def push(self) -> int:
        progressed = 0
        for stream_id in self.live():
            n = self.send(stream_id, DECLARED_BYTES - 1 - self.sent[stream_id])
            self.sent[stream_id] += n
            progressed += n
        return progressed


def attack(attackers: list[Attacker], seconds: float) -> None:
    """Every attacker pushes its live streams until each is refused or fully sent but for
    its last byte, or the server grants no credit for 3 s."""
    deadline = time.monotonic() + seconds
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and any(a.live() for a in attackers):
        progressed = sum(a.push() for a in attackers)
        for attacker in attackers:
            while attacker.absorb(0.005):
                progressed += 1
        if progressed:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 3.0:
            break
        else:
            time.sleep(0.05)
    for attacker in attackers:  # answers to the last frames sent
        while attacker.absorb(0.3):
            pass


def large_predict() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hpt"
    tensor = request.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    rows = LARGE_TENSOR_BYTES // 4
    tensor.tensor_shape.dim.add().size = rows
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_content = np.ones(rows, np.float32).tobytes()
    return request


def call_large(port: int, request: predict_pb2.PredictRequest,
               tries: int = 1) -> grpc.StatusCode:
    """The large Predict from a fresh client (`tries` times, a second apart, while it is
    refused): its last status (its answer checked when OK)."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    for attempt in range(tries):
        if attempt:
            time.sleep(1.0)
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            try:
                response = stub.Predict(request, timeout=60, wait_for_ready=True)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                assert re.fullmatch(
                    rf"The server's request buffer is full \(\d+ bytes held, quota "
                    rf"{SERVER_QUOTA_BYTES}\): try again later", exc.details()), exc.details()
                continue
        y = response.outputs["y"].float_val
        assert len(y) == LARGE_TENSOR_BYTES // 4 and y[0] == y[-1] == 2.5
        return grpc.StatusCode.OK
    return grpc.StatusCode.RESOURCE_EXHAUSTED


def refusals_counted(rest_port: int) -> int:
    page = httpx.get(f"http://127.0.0.1:{rest_port}/metrics", timeout=10).text
    match = re.search(r"^tfgate_grpc_request_buffer_refusals_total (\d+)", page, re.M)
    assert match, "no tfgate_grpc_request_buffer_refusals_total on /metrics"
    for name in ("tfgate_grpc_incomplete_frame_bytes", "tfgate_grpc_frame_quota_closes_total"):
        assert re.search(rf"^{name} \d+", page, re.M), f"no {name} on /metrics"
    return int(match.group(1))


def test_many_connections_half_sending_large_predicts_stay_within_the_quota(
    gateway: ServerProcess,
) -> None:
    """Six connections each half-send two 60 MiB Predicts (720 MiB in all; each connection
    within its own per-connection budget). The server holds at most its 160 MiB quota: calls
    past it are refused RESOURCE_EXHAUSTED until two are left (2 x 60 MiB fits, three do not),
    the RSS stays tied to the quota, small calls go on throughout; a 56 MiB Predict is
    refused while the attackers hold their bytes and served from a fresh client once they
    are gone."""
    pid = gateway.process.pid
    refusals_before = refusals_counted(gateway.rest_port)
    baseline = vm_rss_bytes(pid)
    attackers: list[Attacker] = []
    request = large_predict()
    try:
        with Legit(gateway.grpc_port) as legit:
            with PeakRss(pid) as peak:
                for _ in range(ATTACK_CONNECTIONS):
                    attackers.append(Attacker(gateway.grpc_port))
                    attackers[-1].start([2 * n + 1 for n in range(STREAMS_PER_CONNECTION)])
                attack(attackers, 90.0)
            legit.assert_served()
            answers = [fields for a in attackers for fields in a.answers.values()]
            survivors = [n for a in attackers for s, n in a.sent.items() if s not in a.answers]
            # While the attackers hold their bytes, a message larger than what is left fails.
            during = call_large(gateway.grpc_port, request)
    finally:
        for attacker in attackers:
            attacker.raw.close()
    released = settle_rss(pid, baseline, RSS_SLACK_BYTES)  # the attackers' bytes go with their connections
    # A fresh client once they are gone (the server may take a moment to see them go).
    after = call_large(gateway.grpc_port, request, tries=5)
    refusals = refusals_counted(gateway.rest_port) - refusals_before
    figures("request quota", refused_calls=len(answers), surviving_calls=len(survivors),
            baseline_rss=baseline, peak_rss=peak.peak, released_rss=released)
    assert answers, "no call was refused: the quota did not hold"
    for fields in answers:
        assert fields["grpc-status"] == RESOURCE_EXHAUSTED, fields
        assert fields["grpc-message"].endswith(f"quota {SERVER_QUOTA_BYTES}): try again later")
    assert len(survivors) == 2 and all(n == DECLARED_BYTES - 1 for n in survivors), survivors
    assert during == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert after == grpc.StatusCode.OK
    assert refusals >= len(answers) + 1  # /metrics counts each refused call
    # Growing the buffers briefly holds old and new copies; never the 720 MiB sent.
    assert peak.peak - baseline < 2 * SERVER_QUOTA_BYTES, (baseline, peak.peak)
    assert released <= baseline + RSS_SLACK_BYTES, (baseline, released)
    assert gateway.process.poll() is None  # the server stays up
