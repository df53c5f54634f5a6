"""Load generators: raw asyncio HTTP/1.1 keep-alive and raw HTTP/2 gRPC, closed or open loop.

Data path position: outside the server. bench/suite.py (or `tfgate bench load`) builds a
Target, and run_level() drives it at a fixed concurrency (N requests always outstanding,
one per keep-alive connection, like perf_analyzer's concurrency mode) or at a fixed request
rate (open loop; latency counts from the scheduled send time, so a slow server cannot hide
its queueing). Requests are pre-built bytes; the client parses only the status line and
the body length, so one Python core drives well over 10k requests/s. gRPC goes over
bench/grpc_h2.py's raw HTTP/2 connections by default, or through grpc.aio (`client="aio"`)
to cross-check them. Traffic goes to
127.0.0.1 only and every level is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

import grpc

from bench.grpc_h2 import H2Connection
from bench.stats import Window, stable

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
MAX_OPEN_LOOP_CONNECTIONS = 512


class Recorder:
    """Collects completions of the current window (event-loop only)."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.errors: dict[str, int] = {}
        self.started = time.perf_counter()

    def ok(self, latency_ns: int) -> None:
        self.latencies.append(latency_ns)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def cut(self) -> Window:
        now = time.perf_counter()
        window = Window(now - self.started, self.latencies, self.errors)
        self.latencies, self.errors, self.started = [], {}, now
        return window


@dataclasses.dataclass(frozen=True)
class HttpTarget:
    host: str
    port: int
    path: str
    body: bytes
    protocol: str = "rest"
    content_type: str = "application/json"
    # extra request headers, e.g. V2's Inference-Header-Content-Length for binary data
    headers: tuple[tuple[str, str], ...] = ()
    # when set, connection i posts to alternate_paths[i % n] instead of `path` (e.g. a
    # client-side A/B split over explicit version URLs) ...
    alternate_paths: tuple[str, ...] = ()
    # ... or, with this set, every request picks one of them at random (seeded), as clients
    # that randomise the URL per request do
    alternate_per_request: bool = False
    # when set, connection i sends this header with the value "client-<i>" (e.g. a traffic
    # rule's routing key, one per simulated user)
    per_connection_header: str = ""

    def request_bytes(self, path: str | None = None, connection: int | None = None) -> bytes:
        headers = self.headers
        if self.per_connection_header and connection is not None:
            headers = (*headers, (self.per_connection_header, f"client-{connection}"))
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        head = (
            f"POST {path or self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {self.content_type}\r\n{extra}"
            f"Content-Length: {len(self.body)}\r\n\r\n"
        )
        return head.encode() + self.body


@dataclasses.dataclass(frozen=True)
class GrpcTarget:
    host: str
    port: int
    request: bytes  # a serialized request of `method` (a PredictRequest by default)
    protocol: str = "grpc"
    client: str = "h2"  # "h2": bench/grpc_h2.py; "aio": grpc.aio
    method: str = PREDICT_METHOD  # or V2's /inference.GRPCInferenceService/ModelInfer


Target = HttpTarget | GrpcTarget


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(
        self,
        requests: Sequence[bytes],
        on_response: Callable[[_HttpConnection, int], None],
        rng: random.Random | None = None,
    ):
        """Sends requests[0], or with `rng` one of `requests` at random per request."""
        self.requests = requests
        self.rng = rng
        self.on_response = on_response
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_ns = 0
        self.busy = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.on_response(self, -1)
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, sent_ns: int) -> None:
        self.busy = True
        self.sent_ns = sent_ns
        if self.transport is None:
            self.busy = False
            self.on_response(self, -1)
            return
        requests = self.requests
        self.transport.write(requests[0] if self.rng is None else self.rng.choice(requests))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            status, used = _parse_response(self.buffer)
            if not used:
                return
            del self.buffer[:used]
            self.busy = False
            self.on_response(self, status)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse_response(buffer: bytearray) -> tuple[int, int]:
    """(status, bytes used) of the first complete response in buffer; (0, 0) if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 0, 0
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    start = end + 4
    # At a line start: V2's "inference-header-content-length:" ends with the same text.
    marker = head.find(b"\r\ncontent-length:")
    if marker >= 0:
        line_end = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)])
        return (status, start + length) if len(buffer) >= start + length else (0, 0)
    if b"transfer-encoding: chunked" in head:
        return _parse_chunked(buffer, start, status)
    return status, start


def _parse_chunked(buffer: bytearray, pos: int, status: int) -> tuple[int, int]:
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return 0, 0
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2 + size + 2
        if len(buffer) < pos:
            return 0, 0
        if size == 0:
            return status, pos


class _Connection(Protocol):
    busy: bool
    closed: asyncio.Future[None]

    def close(self) -> None: ...


async def _drain_and_close(connections: Sequence[_Connection], drain_seconds: float) -> None:
    """Let outstanding requests finish (bounded), then close every connection."""
    deadline = time.monotonic() + drain_seconds
    while any(c.busy for c in connections) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for conn in connections:
        conn.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in connections)), timeout=2.0)


async def _open_loop(
    rate: float, poisson: bool, running: Callable[[], bool], send: Callable[[int], None]
) -> None:
    """Open loop: send(scheduled_ns) at `rate` requests/s (exponential gaps with `poisson`)
    while running(); a request's latency counts from its scheduled time, so a slow server
    cannot hide its queueing behind late sends."""
    interval_ns = 1e9 / rate
    next_ns = float(time.perf_counter_ns())
    while running():
        now = time.perf_counter_ns()
        while next_ns <= now:
            send(int(next_ns))
            next_ns += random.expovariate(1.0) * interval_ns if poisson else interval_ns
        await asyncio.sleep(max(0.0, (next_ns - time.perf_counter_ns()) / 1e9))


class _HttpDriver:
    """Closed loop (concurrency) or open loop (rate) over raw keep-alive connections."""

    def __init__(self, target: HttpTarget, recorder: Recorder) -> None:
        self.target = target
        self.recorder = recorder
        self.running = True
        self.idle: list[_HttpConnection] = []
        self.backlog: list[int] = []  # open loop: scheduled send times waiting for a connection
        self.connections: list[_HttpConnection] = []
        self.open_loop = False

    async def connect(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        target = self.target
        paths = target.alternate_paths or (None,)
        rng = random.Random(0) if target.alternate_per_request and len(paths) > 1 else None
        for index in range(count):
            if rng is not None:
                requests = [target.request_bytes(p, index) for p in paths]
            else:
                requests = [target.request_bytes(paths[index % len(paths)], index)]
            _, conn = await loop.create_connection(
                lambda requests=requests: _HttpConnection(requests, self._on_response, rng),  # type: ignore[misc]
                self.target.host,
                self.target.port,
            )
            self.connections.append(conn)

    def _on_response(self, conn: _HttpConnection, status: int) -> None:
        now = time.perf_counter_ns()
        if status == 200:
            self.recorder.ok(now - conn.sent_ns)
        else:
            self.recorder.error("disconnected" if status < 0 else f"http_{status}")
        if not self.running or conn.transport is None:
            return
        if self.open_loop:
            if self.backlog:
                conn.send(self.backlog.pop(0))
            else:
                self.idle.append(conn)
        else:
            conn.send(time.perf_counter_ns())

    def start_closed(self) -> None:
        for conn in self.connections:
            conn.send(time.perf_counter_ns())

    async def run_open(self, rate: float, poisson: bool) -> None:
        self.open_loop = True
        self.idle = list(self.connections)

        def send(scheduled_ns: int) -> None:
            if self.idle:
                self.idle.pop().send(scheduled_ns)
            else:
                self.backlog.append(scheduled_ns)

        await _open_loop(rate, poisson, lambda: self.running, send)

    async def stop(self, drain_seconds: float) -> None:
        self.running = False
        await _drain_and_close(self.connections, drain_seconds)


class _GrpcDriver:
    """grpc.aio unary Predict calls with pre-serialized request bytes."""

    def __init__(self, target: GrpcTarget, recorder: Recorder, channels: int = 1) -> None:
        self.target = target
        self.recorder = recorder
        self.running = True
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        address = f"{target.host}:{target.port}"
        self.channels = [
            grpc.aio.insecure_channel(address, options=[*options, ("grpc.channel_id", i)])
            for i in range(channels)
        ]
        # No serializers: the request is already bytes and the reply is not parsed.
        self.calls = [ch.unary_unary(target.method) for ch in self.channels]
        self.tasks: list[asyncio.Task[None]] = []

    async def _one(self, call: Callable[..., Awaitable[bytes]], sent_ns: int) -> None:
        try:
            await call(self.target.request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            self.recorder.error(f"grpc_{exc.code().name}")
            return
        self.recorder.ok(time.perf_counter_ns() - sent_ns)

    async def _closed_loop(self, index: int) -> None:
        call = self.calls[index % len(self.calls)]
        while self.running:
            await self._one(call, time.perf_counter_ns())

    def start_closed(self, concurrency: int) -> None:
        self.tasks = [asyncio.create_task(self._closed_loop(i)) for i in range(concurrency)]

    async def run_open(self, rate: float, poisson: bool) -> None:
        pending: set[asyncio.Task[None]] = set()
        calls = itertools.cycle(self.calls)

        def send(scheduled_ns: int) -> None:
            task = asyncio.create_task(self._one(next(calls), scheduled_ns))
            pending.add(task)
            task.add_done_callback(pending.discard)

        await _open_loop(rate, poisson, lambda: self.running, send)
        self.tasks = list(pending)

    async def stop(self, drain_seconds: float) -> None:
        self.running = False
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=drain_seconds)
        for task in self.tasks:
            task.cancel()
        for channel in self.channels:
            await channel.close()


class _H2GrpcDriver:
    """Unary Predict calls over raw HTTP/2 connections, any number outstanding on each.

    A connection that goes away (GOAWAY at a max connection age, a reset, a protocol error)
    is replaced in its slot. The closed loop's calls wait for the replacement; every failed
    attempt to connect counts as an error, so a level against a dead server shows errors,
    never an empty but clean window.
    """

    RECONNECT_PAUSE_SECONDS = 0.1
    CONNECT_TIMEOUT_SECONDS = 5.0

    def __init__(self, target: GrpcTarget, recorder: Recorder, connections: int = 1) -> None:
        self.target = target
        self.recorder = recorder
        self.running = True
        self.count = connections
        self.slots: list[H2Connection] = []
        self.retired: list[H2Connection] = []  # replaced ones, maybe still finishing calls
        self.parked: list[int] = []  # per slot: closed-loop calls waiting for a connection
        self.replacing: dict[int, asyncio.Task[None]] = {}
        self.open_loop = False

    async def _open(self) -> H2Connection:
        host, port, request = self.target.host, self.target.port, self.target.request
        method = self.target.method
        _, conn = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(
                lambda: H2Connection(host, port, request, path=method), host, port
            ),
            self.CONNECT_TIMEOUT_SECONDS,
        )
        return conn

    async def connect(self) -> None:
        for _ in range(self.count):
            self.slots.append(await self._open())
        self.parked = [0] * self.count

    def _issue(self, slot: int, sent_ns: int) -> None:
        conn = self.slots[slot]
        if conn.usable:
            conn.call(sent_ns, lambda sent, err: self._done(slot, sent, err))
        else:
            self.parked[slot] += 1
            self._replace(slot)

    def _done(self, slot: int, sent_ns: int, error: str | None) -> None:
        now = time.perf_counter_ns()
        if error is None:
            self.recorder.ok(now - sent_ns)
        else:
            self.recorder.error(error)
        if self.running and not self.open_loop:
            self._issue(slot, time.perf_counter_ns())

    def _replace(self, slot: int) -> None:
        if self.running and slot not in self.replacing:
            self.replacing[slot] = asyncio.get_running_loop().create_task(self._reconnect(slot))

    async def _reconnect(self, slot: int) -> None:
        try:
            while self.running:
                try:
                    conn = await self._open()
                except (OSError, TimeoutError):
                    for _ in range(max(1, self.parked[slot])):
                        self.recorder.error("connect_failed")
                    await asyncio.sleep(self.RECONNECT_PAUSE_SECONDS)
                    continue
                self.retired.append(self.slots[slot])
                self.slots[slot] = conn
                parked, self.parked[slot] = self.parked[slot], 0
                now = time.perf_counter_ns()
                for _ in range(parked):
                    self._issue(slot, now)
                if not self.parked[slot]:  # else the new one went away at once: again
                    return
        finally:
            del self.replacing[slot]

    def start_closed(self, concurrency: int) -> None:
        for i in range(concurrency):
            self._issue(i % len(self.slots), time.perf_counter_ns())

    async def run_open(self, rate: float, poisson: bool) -> None:
        self.open_loop = True
        slots = itertools.cycle(range(len(self.slots)))

        def send(scheduled_ns: int) -> None:
            slot = next(slots)
            conn = self.slots[slot]
            if conn.usable:
                conn.call(scheduled_ns, lambda sent, err: self._done(slot, sent, err))
            else:
                self.recorder.error("no_connection")
                self._replace(slot)

        await _open_loop(rate, poisson, lambda: self.running, send)

    async def stop(self, drain_seconds: float) -> None:
        self.running = False
        tasks = list(self.replacing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _drain_and_close([*self.slots, *self.retired], drain_seconds)


@dataclasses.dataclass(frozen=True)
class LevelOptions:
    concurrency: int = 1  # closed loop when request_rate == 0
    request_rate: float = 0.0  # requests/s, open loop
    poisson: bool = False
    warmup_seconds: float = 1.0
    window_seconds: float = 2.0
    min_windows: int = 3
    max_windows: int = 8
    drain_seconds: float = 10.0


Probe = Callable[[], Awaitable[dict[str, float]]]
Progress = Callable[[int, int, Window], None]


async def run_level(
    target: Target,
    options: LevelOptions,
    probe: Probe | None = None,
    progress: Progress | None = None,
) -> tuple[list[Window], list[dict[str, float]], bool]:
    """Drive one level until it is stable (or max_windows); returns the windows, the probe
    snapshots taken at every window boundary (len = windows + 1) and whether it was stable."""
    recorder = Recorder()
    driver: _HttpDriver | _GrpcDriver | _H2GrpcDriver
    open_task: asyncio.Task[None] | None = None
    if isinstance(target, HttpTarget):
        driver = _HttpDriver(target, recorder)
        count = options.concurrency
        if options.request_rate:
            count = min(MAX_OPEN_LOOP_CONNECTIONS, max(8, int(options.request_rate * 0.05)))
        await driver.connect(count)
    elif target.client == "aio":
        driver = _GrpcDriver(target, recorder, channels=1 + options.concurrency // 64)
    else:
        driver = _H2GrpcDriver(target, recorder, connections=1 + options.concurrency // 64)
        await driver.connect()
    try:
        if options.request_rate:
            open_task = asyncio.create_task(
                driver.run_open(options.request_rate, options.poisson)
            )
        elif isinstance(driver, _HttpDriver):
            driver.start_closed()
        else:
            driver.start_closed(options.concurrency)
        await asyncio.sleep(options.warmup_seconds)
        recorder.cut()
        windows: list[Window] = []
        snapshots = [await probe()] if probe else []
        is_stable = False
        while len(windows) < options.max_windows:
            await asyncio.sleep(options.window_seconds)
            windows.append(recorder.cut())
            if probe:
                snapshots.append(await probe())
            if progress:
                progress(len(windows), options.max_windows, windows[-1])
            is_stable = stable(windows)
            if is_stable and len(windows) >= options.min_windows:
                break
        return windows, snapshots, is_stable
    finally:
        driver.running = False
        if open_task is not None:
            await open_task
        await driver.stop(options.drain_seconds)


class ClosedLoad:
    """A running closed loop: what completed (recorder) and where its connections post."""

    def __init__(self, driver: _HttpDriver) -> None:
        self.recorder = driver.recorder
        self._driver = driver

    def post_to(self, paths: Sequence[str | None]) -> None:
        """Connection i posts to paths[i] from its next request on (None: the target's own
        path), keeping its headers: clients changing what they address under the same
        load (bench/traffic_flip.py's client-side split)."""
        target = self._driver.target
        for index, conn in enumerate(self._driver.connections):
            conn.requests = [target.request_bytes(paths[index % len(paths)], index)]


@contextlib.asynccontextmanager
async def closed_loop(target: HttpTarget, concurrency: int) -> AsyncIterator[ClosedLoad]:
    """A closed loop of `concurrency` keep-alive connections that runs until the block ends;
    its recorder's cut() gives what completed since the last cut (bench/traffic_flip.py
    switches server state, or where the clients post, under one continuous load)."""
    driver = _HttpDriver(target, Recorder())
    await driver.connect(concurrency)
    driver.start_closed()
    try:
        yield ClosedLoad(driver)
    finally:
        await driver.stop(1.0)
