"""Per-call CPU of tfgate's hand-written HTTP/2 gRPC server vs the `h2` package (python-hyper).

Not part of the load generator: the measurement behind keeping app/rpc/h2/connection.py
hand-written (issue 19). The same recorded client bytes (HEADERS + one DATA frame per unary
call, 1-row and 64-row Predict-sized requests) are fed to (a) GrpcH2Connection with a fake
transport, the whole call path including the handler task, and (b) h2.connection.H2Connection
doing only the HTTP/2 part (events, flow-control acknowledgement, response headers, data,
trailers) plus the same handler task. CPU time per call (time.process_time), best of 3.

    pip install h2   # only for this script; tfgate does not depend on it
    PYTHONPATH=. .venv/bin/python bench/h2_transport_micro.py [calls]
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import grpc

from app.rpc.h2 import frames as f
from app.rpc.h2.connection import GrpcH2Connection
from app.rpc.h2.server import GrpcH2Server

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
except ImportError:  # pragma: no cover - a measurement tool's optional dependency
    sys.exit("bench/h2_transport_micro.py needs the h2 package (pip install h2)")

CALLS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
PATH = "/tensorflow.serving.PredictionService/Predict"
REPLY = os.urandom(200)
# The client's SETTINGS (a large stream window) and a connection window for the replies.
CLIENT_START = (
    f.frame(f.SETTINGS, 0, 0, f.settings_payload({f.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 24}))
    + f.frame(f.WINDOW_UPDATE, 0, 0, f.u32(f.MAX_WINDOW - f.DEFAULT_WINDOW))
)


def client_bytes(body_bytes: int, calls: int) -> list[bytes]:
    """One unary call per item: HEADERS + a DATA frame carrying the whole request."""
    block = f.literal_block([
        (":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "10S"),
    ])
    message = b"\x00" + body_bytes.to_bytes(4, "big") + os.urandom(body_bytes)
    return [
        f.frame(f.HEADERS, f.END_HEADERS, 2 * i + 1, block)
        + f.frame(f.DATA, f.END_STREAM, 2 * i + 1, message)
        for i in range(calls)
    ]


class CountingTransport:
    """What GrpcH2Connection needs of an asyncio transport; counts bytes written."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.written += len(chunk)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def handwritten(frames: list[bytes]) -> float:
    server = GrpcH2Server()

    async def predict(request: bytes, context: object) -> bytes:
        return REPLY

    server.add_registered_method_handlers(
        "tensorflow.serving.PredictionService",
        {"Predict": grpc.unary_unary_rpc_method_handler(predict)},
    )
    connection = GrpcH2Connection(server)
    connection.connection_made(CountingTransport())  # type: ignore[arg-type]
    connection.data_received(f.PREFACE + CLIENT_START)
    started = time.process_time()
    for data in frames:
        connection.data_received(data)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    elapsed = time.process_time() - started
    assert not connection.calls, f"{len(connection.calls)} calls unanswered"
    return elapsed / len(frames) * 1e6


async def baseline(frames: list[bytes]) -> float:
    """The event loop's share alone: one task and the same loop turns per call."""

    async def nothing() -> bytes:
        return REPLY

    started = time.process_time()
    loop = asyncio.get_running_loop()
    for _ in frames:
        task = loop.create_task(nothing())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()
    return (time.process_time() - started) / len(frames) * 1e6


async def h2_package(frames: list[bytes]) -> float:
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    connection = h2.connection.H2Connection(config)
    connection.initiate_connection()
    codes = h2.settings.SettingCodes
    connection.update_settings({
        codes.INITIAL_WINDOW_SIZE: 8 << 20, codes.MAX_FRAME_SIZE: 1 << 20,
        codes.MAX_CONCURRENT_STREAMS: 256,
    })
    connection.increment_flow_control_window(f.MAX_WINDOW - f.DEFAULT_WINDOW)
    transport = CountingTransport()
    transport.write(connection.data_to_send())
    # The client acknowledges both of the server's SETTINGS frames, then sends its own.
    ack = f.frame(f.SETTINGS, f.ACK, 0)
    connection.receive_data(f.PREFACE + ack + ack + CLIENT_START)
    transport.write(connection.data_to_send())
    response_headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    trailers = [(b"grpc-status", b"0")]
    reply = b"\x00" + len(REPLY).to_bytes(4, "big") + REPLY

    async def predict(request: bytes) -> bytes:
        return REPLY

    started = time.process_time()
    loop = asyncio.get_running_loop()
    for data in frames:
        bodies: dict[int, bytearray] = {}
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream_id = event.stream_id
                task = loop.create_task(predict(bytes(bodies.pop(stream_id))))
                await asyncio.sleep(0)
                assert task.result() == REPLY
                connection.send_headers(stream_id, response_headers)
                connection.send_data(stream_id, reply)
                connection.send_headers(stream_id, trailers, end_stream=True)
                transport.write(connection.data_to_send())
        await asyncio.sleep(0)
    return (time.process_time() - started) / len(frames) * 1e6


async def main() -> None:
    for rows, size in ((1, 1100), (64, 64 * 1024 + 200)):
        frames = client_bytes(size, CALLS)
        results = {}
        for name, measure in (("loop+task baseline", baseline),
                              ("hand-written (whole call)", handwritten),
                              ("h2 package (framing + task)", h2_package)):
            results[name] = min([await measure(frames) for _ in range(3)])
        print(f"{rows:>2} rows ({size} B request): "
              + "; ".join(f"{name} {us:.1f} us" for name, us in results.items()))


if __name__ == "__main__":
    asyncio.run(main())
