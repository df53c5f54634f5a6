"""app/cache/redis_client.py: the circuit breaker, and the client (redis-py behind our deadline)
against a real redis-server: refused, frozen, restarted, full, over TCP, unix socket and TLS."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from app.cache.redis_client import (
    BreakerState,
    CircuitBreaker,
    RedisAddress,
    RedisClient,
    RedisUnavailable,
    ReplyError,
    parse_redis_url,
)
from tests.redisproc import RedisProcess, running_redis
from tests.serverproc import free_port

# --- breaker ---


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_later() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 2.0, clock)
    changes: list[BreakerState] = []
    breaker.on_change.append(changes.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    breaker.success()  # not consecutive: the count starts again
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 2.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN,
                       BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_concurrent_failures_of_one_incident_count_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 1.0, clock)
    started = clock.now
    clock.now += 0.03  # one hiccup: 64 calls in flight all time out
    for _ in range(64):
        breaker.failure(started)
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 1
    for _ in range(2):  # Redis down: each new call fails on its own
        clock.now += 0.001
        breaker.failure(clock.now)
    assert breaker.state is BreakerState.OPEN


def test_a_lost_probe_is_replaced() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()  # probe whose caller is cancelled and never reports
    clock.now += 0.5
    assert not breaker.allow()
    clock.now += 0.6
    assert breaker.allow()


# --- client against a real redis-server ---


@pytest.fixture
def redis(tmp_path: pathlib.Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as process:
        yield process


def client_for(redis: RedisProcess, timeout: float = 0.2, **kwargs: int) -> RedisClient:
    return RedisClient(RedisAddress(port=redis.port), timeout, **kwargs)


async def test_mget_and_set_with_ttl(redis: RedisProcess) -> None:
    client = client_for(redis)
    try:
        assert await client.mget([b"a", b"b"]) == [None, None]
        await client.set_many([(b"a", b"\x00\r\n1"), (b"b", b"x" * 100_000)], 30)
        assert await client.mget([b"a", b"b", b"c"]) == [b"\x00\r\n1", b"x" * 100_000, None]
        ttl = await client.command(b"TTL", b"a")
        assert isinstance(ttl, int) and 0 < ttl <= 30
        # concurrent callers share the pool; every caller gets its own answer
        values = await asyncio.gather(*(client.mget([b"a"]) for _ in range(200)))
        assert all(v == [b"\x00\r\n1"] for v in values)
    finally:
        await client.close()


async def test_more_callers_than_connections_wait_for_one(redis: RedisProcess) -> None:
    client = client_for(redis, max_connections=2)
    try:
        await client.set_many([(b"k%d" % i, b"v%d" % i) for i in range(50)], 60)
        values = await asyncio.gather(*(client.mget([b"k%d" % i]) for i in range(50)))
        assert values == [[b"v%d" % i] for i in range(50)]
    finally:
        await client.close()


async def test_error_reply_to_a_command_is_a_reply_error(redis: RedisProcess) -> None:
    client = client_for(redis)
    try:
        with pytest.raises(ReplyError, match="unknown command"):
            await client.command(b"NOSUCHCOMMAND")
        assert await client.mget([b"a"]) == [None]  # the connection is still in step
    finally:
        await client.close()


async def test_a_cancelled_caller_does_not_disturb_its_batch(redis: RedisProcess) -> None:
    client = client_for(redis)
    try:
        await client.set_many([(b"k", b"v")], 60)
        first = asyncio.ensure_future(client.mget([b"k"]))
        second = asyncio.ensure_future(client.mget([b"k", b"missing"]))
        await asyncio.sleep(0)  # both have joined this turn's batch
        first.cancel()
        assert await second == [b"v", None]
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await client.mget([b"k"]) == [b"v"]
    finally:
        await client.close()


async def test_refused_fails_fast() -> None:
    client = RedisClient(RedisAddress(port=free_port()), 1.0)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        await client.mget([b"a"])
    assert time.monotonic() - started < 0.5
    await client.close()


async def test_frozen_redis_times_out_then_recovers(redis: RedisProcess) -> None:
    client = client_for(redis, timeout=0.05)
    try:
        await client.mget([b"a"])
        redis.pause()
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="timed out"):
            await client.mget([b"a"])
        assert time.monotonic() - started < 0.5
        redis.resume()
        assert await client.mget([b"a"]) == [None]
    finally:
        redis.resume()
        await client.close()


async def test_connect_to_a_frozen_redis_times_out(redis: RedisProcess) -> None:
    """The kernel accepts the connection for a stopped redis-server; the set-up (AUTH and
    SELECT) then never gets an answer: bounded by the same deadline."""
    with running_redis(redis.work_dir, ("--requirepass", "pw")) as locked:
        client = RedisClient(RedisAddress(port=locked.port, password="pw", db=1), 0.05)
        try:
            locked.pause()
            started = time.monotonic()
            with pytest.raises(RedisUnavailable, match="timed out"):
                await client.mget([b"a"])
            assert time.monotonic() - started < 0.5
            locked.resume()
            await client.set_many([(b"a", b"1")], 60)
            assert await client.mget([b"a"]) == [b"1"]  # db 1, set up properly this time
        finally:
            locked.resume()
            await client.close()


@pytest.mark.parametrize("connections", [1, 16])
async def test_late_replies_never_answer_later_commands(
    redis: RedisProcess, connections: int,
) -> None:
    """Commands written to a frozen Redis (SIGSTOP) time out; after SIGCONT Redis answers
    them. Those late replies must never be read as the answers to later commands: the
    timed-out connections are closed, not reused. Checked right after SIGCONT (the late
    replies race the new commands) and again once they must all have arrived."""
    client = client_for(redis, timeout=0.05, max_connections=connections)
    keys = [b"key%d" % i for i in range(16)]
    try:
        await client.set_many([(k, b"value of " + k) for k in keys], 60)
        await asyncio.gather(*(client.mget([k]) for k in keys))  # open the pooled connections
        redis.pause()
        timed_out = await asyncio.gather(*(client.mget([k]) for k in keys),
                                         return_exceptions=True)
        assert all(isinstance(r, RedisUnavailable) for r in timed_out), timed_out
        with pytest.raises(RedisUnavailable):
            await client.set_many([(b"late", b"written while frozen")], 60)
        redis.resume()
        # At once, without yielding to the loop (which would read the late replies first and
        # let redis-py's pool see a dirty connection): a reused connection would answer
        # this with a late reply.
        assert await client.mget([keys[0], b"missing"]) == [b"value of key0", None]
        for settle in (0.0, 0.1):
            await asyncio.sleep(settle)
            for round_ in range(3):
                order = [*keys[round_::3], b"missing"]
                answers = await asyncio.gather(*(client.mget([k, b"missing"]) for k in order))
                assert answers == [[redis_value(k), None] for k in order]
                assert await client.command(b"PING") == b"PONG"
    finally:
        redis.resume()
        await client.close()


async def test_late_reply_never_answers_a_command_in_flight(redis: RedisProcess) -> None:
    """The sharpest case: a command is written to a frozen Redis and times out; the next
    command is written while Redis is still frozen and is in flight when Redis wakes up and
    answers both. Over one connection the next command would read the first one's reply;
    it must get its own (the timed-out connection was closed, this one is new)."""
    client = client_for(redis, timeout=0.3, max_connections=1)
    try:
        await client.set_many([(b"first", b"1"), (b"second", b"2")], 60)
        redis.pause()
        with pytest.raises(RedisUnavailable, match="timed out"):
            await client.mget([b"first"])
        in_flight = asyncio.ensure_future(client.mget([b"second", b"missing"]))
        await asyncio.sleep(0.05)  # written, unanswered
        redis.resume()
        assert await in_flight == [b"2", None]
    finally:
        redis.resume()
        await client.close()


def redis_value(key: bytes) -> bytes | None:
    return None if key == b"missing" else b"value of " + key


async def test_drop_fails_calls_in_flight_and_reconnects(redis: RedisProcess) -> None:
    client = client_for(redis, timeout=0.3)
    try:
        await client.set_many([(b"k", b"v")], 60)
        redis.pause()
        in_flight = asyncio.gather(*(client.mget([b"k"]) for _ in range(4)),
                                   return_exceptions=True)
        await asyncio.sleep(0.05)
        client.drop()
        outcomes = await in_flight
        assert all(isinstance(o, RedisUnavailable) for o in outcomes), outcomes
        redis.resume()
        assert await client.mget([b"k"]) == [b"v"]
    finally:
        redis.resume()
        await client.close()


async def test_restart_reconnects(redis: RedisProcess) -> None:
    client = client_for(redis)
    try:
        await client.set_many([(b"k", b"v")], 60)
        redis.restart()
        # redis-py notices most reset connections when it takes them from the pool (EOF
        # already read) and reconnects; a reset it cannot see yet fails one call.
        for _ in range(2):
            try:
                assert await client.mget([b"k"]) == [None]  # an empty Redis
                break
            except RedisUnavailable:
                continue
        else:
            pytest.fail("no reconnect after a restart")
    finally:
        await client.close()


async def test_full_redis_answers_oom(redis: RedisProcess) -> None:
    redis.command("CONFIG", "SET", "maxmemory", "1")
    redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    client = client_for(redis)
    try:
        with pytest.raises(ReplyError, match="OutOfMemoryError"):
            await client.set_many([(b"k", b"v"), (b"k2", b"v")], 60)
        assert await client.mget([b"k"]) == [None]  # reads still work
        # a refused write and a read in one pipeline: the error is the write's alone
        write, read = await asyncio.gather(client.set_many([(b"k", b"v")], 60),
                                           client.mget([b"k"]), return_exceptions=True)
        assert isinstance(write, ReplyError) and read == [None]
    finally:
        await client.close()


async def test_auth_and_select(tmp_path: pathlib.Path) -> None:
    with running_redis(tmp_path, ("--requirepass", "pw")) as redis:
        client = RedisClient(RedisAddress(port=redis.port, password="pw", db=2), 0.5)
        try:
            await client.set_many([(b"k", b"v")], 60)
            assert await client.mget([b"k"]) == [b"v"]
            assert redis.command("AUTH", "pw").startswith(b"+OK")
        finally:
            await client.close()
        for address in (RedisAddress(port=redis.port, password="nope"),
                        RedisAddress(port=redis.port)):
            wrong = RedisClient(address, 0.5)
            with pytest.raises(RedisUnavailable, match=r"set-up failed|NOAUTH|Authentication"):
                await wrong.mget([b"k"])
            with pytest.raises(RedisUnavailable):
                await wrong.set_many([(b"k", b"v")], 60)
            await wrong.close()


async def test_unix_socket_url(tmp_path: pathlib.Path) -> None:
    sock = tmp_path / "redis.sock"
    with running_redis(tmp_path, ("--unixsocket", str(sock))):
        client = RedisClient(parse_redis_url(f"unix://{sock}?db=3"), 0.5)
        try:
            await client.set_many([(b"k", b"over a unix socket")], 60)
            assert await client.mget([b"k"]) == [b"over a unix socket"]
            assert b" db=3 " in await client.command(b"CLIENT", b"INFO")
        finally:
            await client.close()


def _self_signed(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: cannot make a certificate for the TLS test")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_rediss_url_verifies_the_server(tmp_path: pathlib.Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    tls = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file",
           str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    with running_redis(tmp_path, tls):
        trusted = RedisClient(
            parse_redis_url(f"rediss://127.0.0.1:{tls_port}/1?ssl_ca_certs={cert}"), 1.0)
        try:
            await trusted.set_many([(b"k", b"over TLS")], 60)
            assert await trusted.mget([b"k"]) == [b"over TLS"]
        finally:
            await trusted.close()
        # the system's CAs do not know this certificate: refused, as RedisUnavailable
        untrusted = RedisClient(parse_redis_url(f"rediss://127.0.0.1:{tls_port}/1"), 1.0)
        with pytest.raises(RedisUnavailable, match=r"(?i)certificate"):
            await untrusted.mget([b"k"])
        await untrusted.close()
