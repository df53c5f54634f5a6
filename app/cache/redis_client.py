"""The result cache's Redis side: redis-py's asyncio client behind one short deadline, and a
circuit breaker.

Data path position: cache.run() -> RedisClient.mget() / set_many() -> this event-loop
turn's batch -> one redis-py pipeline on a pooled connection -> Redis. Every call is bounded
by one short timeout (waiting for a connection, connecting and the reply included) and
raises RedisUnavailable on any failure, so the cache can always fall back to the model; an
error reply to a write (-OOM) raises ReplyError instead, so a full Redis only skips writes.
redis-py does the protocol, connections, AUTH/SELECT, TLS and unix sockets; this module
adds the deadline, the batching and the error mapping. Event-loop only.

A call that times out can leave its reply on the way. redis-py closes the connection of a
command interrupted between sending and reading (its send and read paths disconnect on any
BaseException, our deadline's cancellation included) and reconnects it on its next use, so
a late reply is never read as the answer to another command; tests/unit/cache/test_cache_redis.py
freezes redis-server with SIGSTOP to check this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio
from redis import exceptions as redis_errors
from redis.asyncio.connection import (
    AbstractConnection,
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

DEFAULT_PORT = 6379
# Connections per gateway process. Each batch in flight holds one for its round trip; a
# batch starts every loop turn that has calls, so a slow Redis can have many in flight.
# Past this cap a batch waits for a free connection (inside its deadline) instead of
# opening ever more connections to a Redis that is already slow.
MAX_CONNECTIONS = 64
# redis-py's own socket timeouts are a backstop, as a multiple of timeout_ms: ours (with
# its grace for event-loop lag, see _Deadline) is the one that fires; an equal socket
# timeout would cut that grace short.
SOCKET_TIMEOUT_FACTOR = 2.0

T = TypeVar("T")


class RedisUnavailable(Exception):
    """A Redis call failed: refused, reset, timed out, or answered with an error."""


class ReplyError(Exception):
    """An error reply to a write (-OOM ...): Redis is up but refused the command."""


@dataclasses.dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix_path: str = ""
    db: int = 0
    username: str = ""
    password: str = ""
    tls: bool = False  # rediss://
    ca_certs: str = ""  # rediss:// ?ssl_ca_certs=: CA bundle; empty: the system's

    def describe(self) -> str:
        """For logs: never includes the password."""
        where = self.unix_path or f"{self.host}:{self.port}"
        return f"{where} db {self.db}" + (" (TLS)" if self.tls else "")


def parse_redis_url(url: str) -> RedisAddress:
    """redis://[[user]:password@]host[:port][/db], rediss://... (TLS, server certificate
    and host name verified; ?ssl_ca_certs=/path/ca.pem for a private CA) or
    unix:///path/to.sock[?db=N]. Read by redis-py's own URL parser (the one
    redis.asyncio.from_url uses) plus the checks it leaves out: a database number that is
    not a number and a unix URL without a path. Raises ValueError fit for a config error."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"unsupported cache URL scheme {scheme!r} in {url!r}: use redis://, "
            "rediss:// (TLS) or unix://"
        )
    try:
        options = redis.connection.parse_url(url)
    except ValueError as exc:  # a port out of range or not a number, or ?db=x
        what = "invalid database number" if "'db'" in str(exc) else "invalid port"
        raise ValueError(f"{what} in cache URL {url!r}: {exc}") from None
    db_text = urllib.parse.urlsplit(url).path.lstrip("/") if scheme != "unix" else ""
    if db_text and "db" not in options:  # redis-py drops a db path it cannot read
        raise ValueError(f"invalid database number {db_text!r} in cache URL {url!r}")
    common = {
        "db": options.get("db", 0),
        "username": options.get("username") or "",
        "password": options.get("password") or "",
    }
    if scheme == "unix":
        if not options.get("path"):
            raise ValueError(f"unix socket URL without a path: {url!r}")
        return RedisAddress(unix_path=options["path"], **common)
    tls = scheme == "rediss"
    return RedisAddress(
        host=options.get("host") or "127.0.0.1",
        port=options.get("port") or DEFAULT_PORT,
        tls=tls,
        ca_certs=(options.get("ssl_ca_certs") or "") if tls else "",
        **common,
    )


class _Deadline:
    """Expires an `asyncio.timeout(None)` scope at `when`, after two more loop turns.

    On a saturated loop the timer fires late, maybe with the reply already in the socket:
    the two turns let the loop read it and wake the caller first, so our own lag is not
    blamed on Redis (a plain asyncio.timeout would cancel a caller whose reply is waiting)."""

    __slots__ = ("_live", "_loop", "_scope", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, scope: asyncio.Timeout, when: float):
        self._loop = loop
        self._scope = scope
        self._live = True
        self._timer = loop.call_at(when, self._passed)

    def _passed(self) -> None:
        self._loop.call_soon(self._loop.call_soon, self._expire)

    def _expire(self) -> None:
        if self._live:  # the call may have finished during the grace turns
            self._scope.reschedule(self._loop.time())

    def cancel(self) -> None:
        self._live = False
        self._timer.cancel()


Command = tuple[bytes | str | int, ...]


@dataclasses.dataclass(eq=False)
class _Submission:
    """One caller's commands in a batch; its future gets their replies, in order."""

    commands: Sequence[Command]
    future: asyncio.Future[list[Any]]


class RedisClient:
    """MGET and SET EX through redis-py's asyncio client: pipelined, over a bounded pool.

    Batching: the commands of every call made during one event-loop turn go to Redis as one
    redis-py pipeline (transaction=False: no MULTI, just one write and the replies in order)
    on one pooled connection, under one deadline. At 64 concurrent lookups this replaces 64
    round trips through redis-py's per-command machinery (pool checkout, send, timeouts)
    with one; see docs/cache.md "Performance" for the measured difference.

    Every public call finishes within about `timeout_seconds` (plus a loop turn to join a
    batch and a few to read a reply that already arrived) or raises RedisUnavailable.
    redis-py never retries here: a retry would spend the deadline twice. A lost connection
    is reconnected on its next use; `drop()` discards every connection (the cache calls it
    when its breaker opens, so a black-holed connection is not kept for the probe). The pool
    is created on first use, inside the event loop that uses it."""

    def __init__(
        self,
        address: RedisAddress,
        timeout_seconds: float,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address = address
        self.timeout_seconds = timeout_seconds
        self.max_connections = max_connections
        self._redis: redis.asyncio.Redis | None = None
        self._pending: list[_Submission] = []  # this loop turn's calls, sent at its end
        self._batches: set[asyncio.Task[None]] = set()
        self._discarding: set[asyncio.Task[None]] = set()

    # --- the calls ---

    async def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        (reply,) = await self._submit((("MGET", *keys),))
        if isinstance(reply, redis_errors.ResponseError):
            raise RedisUnavailable(f"MGET failed: {type(reply).__name__}: {reply}")
        if not isinstance(reply, list) or len(reply) != len(keys):
            raise RedisUnavailable("MGET answered with an unexpected reply")
        return reply

    async def set_many(self, entries: Sequence[tuple[bytes, bytes]], ttl_seconds: int) -> None:
        """SET key value EX ttl for every entry, pipelined. An error reply (Redis full:
        -OOM) raises ReplyError after every reply was read."""
        replies = await self._submit([("SET", key, value, "EX", ttl_seconds)
                                      for key, value in entries])
        for reply in replies:
            if isinstance(reply, redis_errors.ResponseError):
                # redis-py strips the error code (-OOM) from the text; its class names it
                raise ReplyError(f"{type(reply).__name__}: {reply}")

    async def command(self, *args: bytes) -> Any:
        """Any single command (tests and tools: PING, TTL, FLUSHDB), as redis-py parses its
        reply (TTL: int); an error reply raises ReplyError."""
        (reply,) = await self._submit((args,))
        if isinstance(reply, redis_errors.ResponseError):
            raise ReplyError(f"{type(reply).__name__}: {reply}")
        return reply

    # --- batching ---

    def _submit(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queue commands for this loop turn's batch. The first call of a turn starts the
        batch's task; its first step runs after every callback of this turn, so it takes
        every call made in the turn. Callers await the future directly: a cancelled caller
        cancels only its own future, the batch goes on."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._pending:
            pending = self._pending
            task = loop.create_task(self._run(pending))
            self._batches.add(task)
            task.add_done_callback(functools.partial(self._batch_done, pending))
        self._pending.append(_Submission(commands, future))
        return future

    def _batch_done(self, pending: list[_Submission], task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if task.cancelled():  # maybe before its first step (loop shutting down): never hang
            if self._pending is pending:
                self._pending = []
            self._fail(pending, "call abandoned")

    async def _run(self, pending: list[_Submission]) -> None:
        """One pipeline for this turn's calls; each caller gets its slice of the replies."""
        if self._pending is pending:
            self._pending = []  # later calls form the next batch
        batch = [s for s in pending if not s.future.done()]  # drop cancelled callers
        if not batch:
            return
        try:
            pipe = self._client().pipeline(transaction=False)
            for submission in batch:
                for command in submission.commands:
                    pipe.execute_command(*command)
            # raise_on_error=False: an error reply is one caller's (a SET refused by a full
            # Redis), returned in its slot; exceptions are the connection's, everyone's.
            replies = await self._bounded(pipe.execute(raise_on_error=False))
        except RedisUnavailable as exc:
            self._fail(batch, str(exc))
            return
        except Exception as exc:  # a bug, not Redis: still no caller may hang or fail hard
            self._fail(batch, f"Redis call failed: {type(exc).__name__}: {exc}")
            return
        start = 0
        for submission in batch:
            end = start + len(submission.commands)
            if not submission.future.done():
                submission.future.set_result(replies[start:end])
            start = end

    @staticmethod
    def _fail(batch: list[_Submission], message: str) -> None:
        for submission in batch:
            if not submission.future.done():
                submission.future.set_exception(RedisUnavailable(message))

    async def _bounded(self, call: Awaitable[T]) -> T:
        """Await one redis-py call within the deadline; every failure is RedisUnavailable."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as scope:
                deadline = _Deadline(loop, scope, loop.time() + self.timeout_seconds)
                try:
                    return await call
                finally:
                    deadline.cancel()
        except (TimeoutError, redis_errors.TimeoutError):
            raise RedisUnavailable(
                f"timed out after {self.timeout_seconds * 1e3:.0f} ms"
            ) from None
        except (redis_errors.AuthenticationError, redis_errors.ResponseError) as exc:
            # raised, not returned in a reply slot: AUTH or SELECT failed on connecting
            raise RedisUnavailable(f"Redis connection set-up failed: {exc}") from None
        except (redis_errors.RedisError, OSError) as exc:
            where = self.address.describe()
            raise RedisUnavailable(f"Redis at {where}: {exc}") from None
        except Exception as exc:
            # redis-py can surface a connection closed under a call (drop() while it is in
            # flight) as a plain AttributeError or RuntimeError; no Redis trouble may fail
            # a request.
            raise RedisUnavailable(f"Redis call failed: {type(exc).__name__}: {exc}") from None

    # --- connections ---

    def _client(self) -> redis.asyncio.Redis:
        if self._redis is None:
            self._redis = redis.asyncio.Redis.from_pool(self._pool())
        return self._redis

    def _pool(self) -> BlockingConnectionPool:
        address = self.address
        backstop = self.timeout_seconds * SOCKET_TIMEOUT_FACTOR
        kwargs: dict[str, Any] = {
            "db": address.db,
            "username": address.username or None,
            "password": address.password or None,
            "socket_timeout": backstop,
            "socket_connect_timeout": backstop,
            "retry": Retry(NoBackoff(), 0),
            "driver_info": None,  # no CLIENT SETINFO round trips inside a connect's deadline
            "protocol": 2,
        }
        connection_class: type[AbstractConnection]
        if address.unix_path:
            connection_class = UnixDomainSocketConnection
            kwargs["path"] = address.unix_path
        else:
            connection_class = SSLConnection if address.tls else Connection
            kwargs.update(host=address.host, port=address.port)
            if address.tls:
                kwargs.update(ssl_cert_reqs="required", ssl_check_hostname=True,
                              ssl_ca_certs=address.ca_certs or None)
        # timeout=None: waiting for a free connection is bounded by the call's own deadline.
        return BlockingConnectionPool(
            connection_class=connection_class,
            max_connections=self.max_connections,
            timeout=None,
            **kwargs,
        )

    def drop(self) -> None:
        """Discard every connection; the next call opens a new pool. Calls in flight on the
        old connections fail (as RedisUnavailable)."""
        old, self._redis = self._redis, None
        if old is None:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._discard(old))
        except RuntimeError:  # no loop running: nothing can be in flight, nothing to await
            return
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    @staticmethod
    async def _discard(client: redis.asyncio.Redis) -> None:
        # Closing a connection to a frozen Redis may time out; it is gone either way.
        with contextlib.suppress(Exception):
            await client.aclose()

    async def close(self) -> None:
        """Let batches in flight finish (each is bounded by the deadline), then close."""
        if self._batches:
            await asyncio.wait(set(self._batches))
        self.drop()
        if self._discarding:
            await asyncio.gather(*self._discarding, return_exceptions=True)


# --- circuit breaker ---


class BreakerState(enum.IntEnum):
    """Exported as the breaker state gauge's value."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Stops calling a failing Redis. CLOSED: every call goes. After `failure_threshold`
    consecutive failures: OPEN, no call goes for `reset_seconds`. Then HALF_OPEN: exactly one
    call (the probe) goes; its success closes the breaker, its failure opens it again. A probe
    that never reports (its caller was cancelled) is replaced after another reset_seconds.

    Failures are counted per incident: a call that started before the last failure was seen
    adds nothing, so one 30 ms hiccup that times out 64 concurrent calls counts once, while
    a Redis that is down (every new call fails) opens the breaker after threshold calls."""

    def __init__(
        self,
        failure_threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._since = 0.0  # when the breaker opened, or when the current probe started
        self._last_failure = -math.inf
        self.on_change: list[Callable[[BreakerState], None]] = []

    def allow(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        now = self.clock()
        if now - self._since < self.reset_seconds:
            return False
        self._since = now  # this caller is the probe
        self._set(BreakerState.HALF_OPEN)
        return True

    def success(self) -> None:
        self.failures = 0
        self._set(BreakerState.CLOSED)

    def failure(self, started: float | None = None) -> None:
        """A call failed; `started` is when it began (clock()), None: now."""
        now = self.clock()
        if self.state is not BreakerState.HALF_OPEN and started is not None and (
            started < self._last_failure
        ):
            return  # the same incident as the failure already counted
        self._last_failure = now
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self._since = self.clock()
            self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            for callback in self.on_change:
                callback(state)
