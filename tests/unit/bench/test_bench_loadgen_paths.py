"""bench/loadgen.py's alternate_paths: connection i posts to alternate_paths[i % n] (the
client-side split bench/traffic_split.py compares the server-side rule against)."""

from __future__ import annotations

import asyncio
import collections

from bench.loadgen import HttpTarget, LevelOptions, run_level

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


def test_connections_spread_over_the_alternate_paths() -> None:
    seen: collections.Counter[str] = collections.Counter()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                seen[lines[0].split(" ")[1]] += 1
                length = next(
                    int(line.split(":")[1]) for line in lines if line.startswith("Content-Length")
                )
                await reader.readexactly(length)
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = HttpTarget("127.0.0.1", port, "/unused", b"{}",
                            alternate_paths=("/v1/models/m/versions/1:predict",
                                             "/v1/models/m/versions/2:predict"))
        options = LevelOptions(concurrency=4, warmup_seconds=0.1, window_seconds=0.2,
                               min_windows=1, max_windows=1, drain_seconds=2)
        try:
            await asyncio.wait_for(run_level(target, options), 30)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert set(seen) == {"/v1/models/m/versions/1:predict", "/v1/models/m/versions/2:predict"}
    one, two = seen.values()
    assert min(one, two) > 0.3 * (one + two)  # two connections each, closed loop
