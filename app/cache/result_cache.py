"""Optional Redis result cache in front of the batcher: row-level, version-safe, single flight.

Data path position: service -> registry.resolve() -> cache.run() -> (only the rows not found)
batcher.submit() -> worker; the answer is merged in row order and stored in the background.
One key per row (dim 0) of a request, so a request of 100 rows with 90 cached sends 10 rows
to the batcher; a request that cannot be split into rows (a scalar input, inputs disagreeing
on dim 0) gets one whole-request key. Keys and entries: app/cache/keys.py.

Failure contract: Redis down, slow or full never fails a request and never delays it by more
than one timeout_ms (the lookup; stores run in the background). A circuit breaker stops
calling a failing Redis and probes it again later. Concurrent identical misses (same row key)
run on the model once: the first request leads, the others await its rows. Event-loop only.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from app.cache.config import CacheConfig, ModelCacheConfig
from app.cache.keys import (
    CachePolicy,
    EntryError,
    KeyContext,
    decode_entry,
    encode_entry,
    merge_rows,
    parse_cache_control,
    row_keys,
    split_rows,
    take_rows,
    whole_key,
)
from app.cache.metrics import CacheMetrics
from app.cache.redis_client import (
    BreakerState,
    CircuitBreaker,
    RedisClient,
    RedisUnavailable,
    ReplyError,
)
from app.core.errors import Code, ServingError
from app.core.types import ServableId, row_count

log = logging.getLogger("tfgate.cache")

Tensors = dict[str, np.ndarray]
Compute = Callable[[Tensors], Awaitable[Tensors]]
# A leader's future resolves to the row's outputs, or None when the leader could not produce
# them (its run failed or was cancelled): a follower then runs the row itself.
RowFuture = asyncio.Future[Tensors | None]


@dataclasses.dataclass(eq=False)
class _Request:
    """One request's walk through the cache."""

    model: str
    settings: ModelCacheConfig
    policy: CachePolicy
    inputs: Tensors
    aliases: tuple[str, ...]
    rows: int | None  # None: whole-request key
    keys: list[bytes]  # one per row (or the one whole-request key)
    deadline: float | None
    found: dict[bytes, Tensors] = dataclasses.field(default_factory=dict)
    computed: dict[bytes, Tensors] = dataclasses.field(default_factory=dict)
    led: dict[bytes, RowFuture] = dataclasses.field(default_factory=dict)
    skipped_redis: bool = False  # counted once as a breaker_open bypass
    _counts: collections.Counter[bytes] | None = None

    def rows_of(self, key: bytes) -> int:
        """How many of the request's rows have this key (duplicate rows share one)."""
        if self._counts is None:
            self._counts = collections.Counter(self.keys)
        return self._counts[key]

    def first_positions(self) -> dict[bytes, int]:
        positions: dict[bytes, int] = {}
        for position, key in enumerate(self.keys):
            positions.setdefault(key, position)
        return positions


class ResultCache:
    """Owns the Redis client, the breaker, the single-flight table and background stores."""

    def __init__(self, config: CacheConfig, client: RedisClient | None = None) -> None:
        self.config = config
        self.timeout_seconds = config.timeout_ms / 1000
        self.client = client or RedisClient(config.address, self.timeout_seconds)
        self.breaker = CircuitBreaker(
            config.breaker_failure_threshold, config.breaker_reset_seconds
        )
        self._outage_logged = False
        self._last_failure = ""  # why the last Redis call failed, for the outage log line
        self.breaker.on_change.append(self._log_breaker)
        self.metrics = CacheMetrics(self.breaker)
        self._in_flight: dict[bytes, RowFuture] = {}
        self._stores: set[asyncio.Task[None]] = set()
        log.info(
            "result cache: Redis at %s, timeout %.0f ms, caching %s",
            config.address.describe(),
            config.timeout_ms,
            ", ".join(sorted(config.models)) or "no model (none has [models.NAME.cache])",
        )

    # --- the request path ---

    async def run(
        self,
        servable: ServableId,
        signature: str,
        inputs: Tensors,
        output_aliases: Sequence[str],
        *,
        cache_control: str | None,
        deadline: float | None,
        compute: Compute,
        fingerprint: bytes = b"",
    ) -> Tensors:
        """The request's outputs: cached rows from Redis, rows other requests are computing
        right now, and the rest from `compute` (the batcher), merged in row order."""
        settings = self.config.models.get(servable.model)
        if settings is None:
            return await compute(inputs)
        policy = parse_cache_control(cache_control)
        if not policy.write:
            self._bypass(servable.model, "no_store")
            return await compute(inputs)
        if not policy.read:
            self._bypass(servable.model, "no_cache")
        request = self._request(
            servable, signature, inputs, output_aliases, settings, policy, fingerprint
        )
        request.deadline = deadline  # followers wait for a leader no longer than this
        await self._lookup(request)
        try:
            outputs = await self._compute_missing(request, compute)
        except BaseException:
            self._abandon(request)
            raise
        if outputs is None:
            outputs = self._merge(request)
        if outputs is None:  # cached and computed rows disagree: answer from the model alone
            self._bypass(request.model, "mixed_rows")
            self._abandon(request)
            return await compute(inputs)
        self._store_later(request)
        return outputs

    def _request(
        self,
        servable: ServableId,
        signature: str,
        inputs: Tensors,
        output_aliases: Sequence[str],
        settings: ModelCacheConfig,
        policy: CachePolicy,
        fingerprint: bytes,
    ) -> _Request:
        context = KeyContext(
            servable.model, servable.version, signature, tuple(output_aliases), fingerprint
        )
        rows = row_count(inputs)
        if rows:
            keys = row_keys(context, inputs, rows)
        else:  # not row-batchable (or no rows at all): one key for the whole request
            rows = None
            keys = [whole_key(context, inputs)]
        return _Request(
            servable.model, settings, policy, inputs, context.output_aliases, rows, keys, None
        )

    async def _lookup(self, request: _Request) -> None:
        """Fill request.found from Redis (one pipelined MGET of the request's distinct keys);
        anything Redis cannot answer (error, timeout, open breaker) is simply not found."""
        if not request.policy.read:
            return  # no-cache: compute every row, neither read nor coalesce
        unique = list(dict.fromkeys(request.keys))
        if self.breaker.allow():
            values = await self._redis("get", self.client.mget(unique))
            for key, value in zip(unique, values or (), strict=False):
                if value is not None:
                    self._decode_into(request, key, value)
        else:
            request.skipped_redis = True
            self._bypass(request.model, "breaker_open")
        hits = sum(1 for key in request.keys if key in request.found)
        if hits:
            self.metrics.hits.inc(request.model, amount=hits)

    def _decode_into(self, request: _Request, key: bytes, value: bytes) -> None:
        try:
            outputs = decode_entry(value)
        except EntryError as exc:
            self.metrics.errors.inc("decode")
            log.warning("ignoring undecodable cache entry %r: %s", key, exc)
            return
        if tuple(outputs) != request.aliases:
            self.metrics.errors.inc("decode")
            return
        request.found[key] = outputs

    async def _compute_missing(self, request: _Request, compute: Compute) -> Tensors | None:
        """Run the missing rows this request leads; wait for the rows others lead. Returns the
        model's outputs as they are when nothing was found anywhere (no merge needed)."""
        follow = self._claim(request)
        lead = [
            k for k in dict.fromkeys(request.keys) if k not in request.found and k not in follow
        ]
        direct: Tensors | None = None
        if lead:
            direct = await self._run_rows(request, lead, compute)
            for key, future in request.led.items():
                if not future.done():
                    future.set_result(request.computed.get(key))
        if follow:
            retry = await self._follow(request, follow)
            if retry:
                await self._run_rows(request, retry, compute)
        if direct is not None and not request.found and not follow:
            return direct if len(lead) == len(request.keys) or request.rows is None else None
        return None

    def _claim(self, request: _Request) -> dict[bytes, RowFuture]:
        """Single flight: split the missing keys into followed (someone runs them now) and
        led (registered here). Only requests that may read the cache take part."""
        follow: dict[bytes, RowFuture] = {}
        if not request.policy.read:
            return follow
        loop = asyncio.get_running_loop()
        coalesced = 0
        for key in dict.fromkeys(request.keys):
            if key in request.found:
                continue
            future = self._in_flight.get(key)
            if future is None:
                future = self._in_flight[key] = loop.create_future()
                request.led[key] = future
            elif future.done() and future.result() is not None:
                request.found[key] = future.result()  # finished, still being stored
                coalesced += request.rows_of(key)
            else:
                follow[key] = future
        if coalesced:
            self.metrics.coalesced.inc(request.model, amount=coalesced)
        return follow

    async def _run_rows(
        self, request: _Request, keys: list[bytes], compute: Compute
    ) -> Tensors | None:
        """Compute the rows of `keys` (one batcher call) into request.computed; returns the
        raw outputs too. Outputs that are not row-aligned are returned but not cached."""
        positions = request.first_positions()
        whole = request.rows is None or (
            len(keys) == request.rows and all(positions[k] == i for i, k in enumerate(keys))
        )
        sub = request.inputs if whole else take_rows(request.inputs, [positions[k] for k in keys])
        outputs = await compute(sub)
        wanted = set(keys)
        self.metrics.misses.inc(request.model, amount=sum(k in wanted for k in request.keys))
        if request.rows is None:
            request.computed[keys[0]] = outputs
            return outputs
        pieces = split_rows(outputs, len(keys))
        if pieces is None:
            self._bypass(request.model, "unsplittable")
            return outputs if whole else None
        request.computed.update(zip(keys, pieces, strict=True))
        return outputs

    async def _follow(self, request: _Request, follow: dict[bytes, RowFuture]) -> list[bytes]:
        """Wait for other requests' runs of these keys; returns the keys they failed."""
        timeout = None
        if request.deadline is not None:
            timeout = max(0.0, request.deadline - asyncio.get_running_loop().time())
        # asyncio.wait, not wait_for/gather: giving up must not cancel the leader's future.
        _, pending = await asyncio.wait(set(follow.values()), timeout=timeout)
        if pending:
            raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
        retry = []
        coalesced = 0
        for key, future in follow.items():
            rows = future.result()
            if rows is None:
                retry.append(key)
            else:
                request.found[key] = rows
                coalesced += request.rows_of(key)
        if coalesced:
            self.metrics.coalesced.inc(request.model, amount=coalesced)
        return retry

    def _merge(self, request: _Request) -> Tensors | None:
        """Every row's outputs stacked in request order; None if some row is missing or the
        rows disagree in dtype or inner shape."""
        rows = []
        for key in request.keys:
            row = request.found.get(key)
            if row is None:
                row = request.computed.get(key)
            if row is None:
                return None
            rows.append(row)
        if request.rows is None:
            return rows[0]
        return merge_rows(rows, request.aliases)

    def _abandon(self, request: _Request) -> None:
        """Release led keys without results: their followers run the rows themselves."""
        for key, future in request.led.items():
            if not future.done():
                future.set_result(None)
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
        request.led.clear()
        request.computed.clear()

    # --- storing ---

    def _store_later(self, request: _Request) -> None:
        """Write the computed rows in the background; led keys stay in the single-flight
        table until then, so a request arriving before the write lands still coalesces."""
        if not request.computed:
            self._release(request)
            return
        if len(self._stores) >= self.config.max_pending_stores:
            self._bypass(request.model, "store_backlog")
            self._release(request)
            return
        task = asyncio.create_task(self._store(request))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _store(self, request: _Request) -> None:
        try:
            entries = self._entries(request)
            if not entries:
                return
            if not self.breaker.allow():
                if not request.skipped_redis:
                    self._bypass(request.model, "breaker_open")
                return
            ttl = request.settings.ttl_seconds
            await self._redis("set", self.client.set_many(entries, ttl))
        finally:
            self._release(request)

    def _entries(self, request: _Request) -> list[tuple[bytes, bytes]]:
        entries = []
        limit = request.settings.max_entry_bytes
        for key, outputs in request.computed.items():
            try:
                value = encode_entry(outputs)
            except EntryError:
                self._bypass(request.model, "unencodable")
                continue
            if len(value) > limit:
                self._bypass(request.model, "too_large")
                continue
            entries.append((key, value))
        return entries

    def _release(self, request: _Request) -> None:
        for key, future in request.led.items():
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
        request.led.clear()

    # --- Redis calls, breaker, metrics ---

    async def _redis(self, op: str, call: Awaitable[Any]) -> Any:
        """Await one Redis call; None (and an error count) on failure, never an exception."""
        started = time.perf_counter()
        began = self.breaker.clock()
        try:
            result = await call
        except ReplyError as exc:  # Redis answered (e.g. -OOM when full): up, but refusing
            self.metrics.errors.inc(op)
            self.breaker.success()
            log.debug("redis %s refused: %s", op, exc)
            return None
        except RedisUnavailable as exc:
            self.metrics.errors.inc(op)
            self._last_failure = str(exc)
            self.breaker.failure(began)
            log.debug("redis %s failed: %s", op, exc)
            return None
        finally:
            self.metrics.redis_latency.observe(op, value=(time.perf_counter() - started) * 1e6)
        self.breaker.success()
        return result

    def _bypass(self, model: str, reason: str) -> None:
        self.metrics.bypasses.inc(model, reason)

    def _log_breaker(self, state: BreakerState) -> None:
        # One line when Redis starts failing and one when it is back, not one per probe.
        if state is BreakerState.OPEN:
            self.client.drop()  # the probe gets a fresh connection, never a black-holed one
        if state is BreakerState.OPEN and not self._outage_logged:
            self._outage_logged = True
            # The cause matters: a wrong password or database never heals by itself.
            log.warning(
                "Redis at %s is failing (%s): cache breaker open, serving from the model "
                "(probing every %.1fs)",
                self.config.address.describe(),
                self._last_failure or "no answer",
                self.config.breaker_reset_seconds,
            )
        elif state is BreakerState.CLOSED:
            self._outage_logged = False
            log.info(
                "Redis at %s answers again: cache breaker closed", self.config.address.describe()
            )

    # --- admin and lifecycle ---

    def overview(self) -> dict[str, Any]:
        """The whole cache at a glance (the dashboard): Redis address, breaker state and the
        rows answered from it, over every model."""
        hits = int(sum(self.metrics.hits.values.values()))
        misses = int(sum(self.metrics.misses.values.values()))
        lookups = hits + misses
        return {
            "address": self.config.address.describe(),
            "breaker": self.breaker.state.name.lower(),
            "hits": hits,
            "misses": misses,
            "hit_ratio": round(hits / lookups, 4) if lookups else None,
            "models": sorted(self.config.models),
        }

    def describe(self, model: str) -> dict[str, Any]:
        """Extra fields for the admin model listing: the model's cache settings and hits."""
        settings = self.config.models.get(model)
        if settings is None:
            return {"cache": {"enabled": False}}
        hits = int(self.metrics.hits.values.get((model,), 0))
        misses = int(self.metrics.misses.values.get((model,), 0))
        lookups = hits + misses
        return {
            "cache": {
                "enabled": True,
                "ttl_seconds": settings.ttl_seconds,
                "max_entry_bytes": settings.max_entry_bytes,
                "hits": hits,
                "misses": misses,
                "coalesced": int(self.metrics.coalesced.values.get((model,), 0)),
                "hit_ratio": round(hits / lookups, 4) if lookups else None,
                "breaker": self.breaker.state.name.lower(),
            }
        }

    async def flush_stores(self) -> None:
        """Wait for background stores (each is bounded by the Redis timeout)."""
        while self._stores:
            await asyncio.wait(set(self._stores))

    async def close(self) -> None:
        if self._stores:
            _, pending = await asyncio.wait(set(self._stores), timeout=self.timeout_seconds * 4)
            for task in pending:
                task.cancel()
        await self.client.close()
