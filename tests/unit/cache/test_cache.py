"""app/cache/result_cache.py: ResultCache against a real redis-server, with a counting stand-in for the
batcher (every call records the rows that reached the "model")."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from app.cache.config import CacheConfig, ModelCacheConfig
from app.cache.keys import KeyContext, encode_entry, row_keys
from app.cache.redis_client import BreakerState, parse_redis_url
from app.cache.result_cache import ResultCache
from app.core.errors import Code, ServingError
from app.core.types import ServableId
from tests.redisproc import RedisProcess, running_redis

V1 = ServableId("m", 1)
SIG = "serving_default"
ALIASES = ("y",)


class Model:
    """Stands in for the batcher: y = 2x (+ offset), counting calls and rows."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[np.ndarray] = []
        self.delay = delay
        self.offset = 0.0
        self.fail: Exception | None = None
        self.scalar_output = False

    @property
    def rows(self) -> int:
        return sum(len(c) for c in self.calls)

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(x.copy())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if self.scalar_output:
            return {"y": np.asarray(x.sum(), np.float32)}
        return {"y": (x * 2 + self.offset).astype(np.float32)}


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[v, v + 0.5] for v in values], np.float32)}


def expected(inputs: dict[str, np.ndarray], offset: float = 0.0) -> np.ndarray:
    return inputs["x"] * 2 + offset


@pytest.fixture
def redis(tmp_path: pathlib.Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as process:
        yield process


def make_cache(redis: RedisProcess, **overrides: object) -> ResultCache:
    models = overrides.pop("models", None) or {"m": ModelCacheConfig(60, 1 << 20)}
    fields = {"timeout_ms": 100.0, "breaker_failure_threshold": 3,
              "breaker_reset_seconds": 0.2, **overrides}
    config = CacheConfig(redis.url, parse_redis_url(redis.url), models=models, **fields)
    return ResultCache(config)


@pytest.fixture
async def cache(redis: RedisProcess) -> AsyncIterator[ResultCache]:
    result_cache = make_cache(redis)
    yield result_cache
    await result_cache.close()


async def run(
    cache: ResultCache, model: Model, inputs: dict[str, np.ndarray], *,
    servable: ServableId = V1, aliases: tuple[str, ...] = ALIASES,
    cache_control: str | None = None, deadline: float | None = None,
) -> dict[str, np.ndarray]:
    outputs = await cache.run(servable, SIG, inputs, aliases, cache_control=cache_control,
                              deadline=deadline, compute=model)
    await cache.flush_stores()
    return outputs


def count(cache: ResultCache, name: str, *labels: str) -> int:
    return int(getattr(cache.metrics, name).values.get(labels, 0))


async def test_miss_then_hit(cache: ResultCache, redis: RedisProcess) -> None:
    model = Model()
    inputs = rows(1, 2, 3)
    first = await run(cache, model, inputs)
    second = await run(cache, model, inputs)
    assert len(model.calls) == 1
    np.testing.assert_array_equal(first["y"], expected(inputs))
    np.testing.assert_array_equal(second["y"], expected(inputs))
    assert second["y"].dtype == np.float32 and second["y"].shape == (3, 2)
    assert redis.dbsize() == 3  # one entry per row
    assert (count(cache, "hits", "m"), count(cache, "misses", "m")) == (3, 3)
    assert cache.describe("m")["cache"]["hit_ratio"] == 0.5
    # the dashboard's overview: every model's rows, the breaker, no password in the address
    overview = cache.overview()
    assert (overview["hits"], overview["misses"], overview["hit_ratio"]) == (3, 3, 0.5)
    assert overview["breaker"] == "closed"
    assert overview["models"] == ["m"]
    assert overview["address"] == cache.config.address.describe()


async def test_partial_hits_run_only_the_missing_rows_and_merge_in_order(
    cache: ResultCache,
) -> None:
    model = Model()
    await run(cache, model, rows(1, 3, 5))
    model.calls.clear()
    inputs = rows(0, 1, 2, 3, 4, 5, 6)
    outputs = await run(cache, model, inputs)
    assert [c[:, 0].tolist() for c in model.calls] == [[0, 2, 4, 6]]
    np.testing.assert_array_equal(outputs["y"], expected(inputs))


async def test_duplicate_rows_in_one_request_run_once(cache: ResultCache) -> None:
    model = Model()
    inputs = rows(7, 8, 7, 7)
    outputs = await run(cache, model, inputs)
    assert [c[:, 0].tolist() for c in model.calls] == [[7, 8]]
    np.testing.assert_array_equal(outputs["y"], expected(inputs))


async def test_versions_and_signatures_are_separate_entries(cache: ResultCache) -> None:
    model = Model()
    inputs = rows(1)
    await run(cache, model, inputs)
    await run(cache, model, inputs, servable=ServableId("m", 2))
    await cache.run(V1, "other", inputs, ALIASES, cache_control=None, deadline=None,
                    compute=model)
    assert len(model.calls) == 3
    await run(cache, model, inputs)  # version 1 is still cached
    assert len(model.calls) == 3


async def test_ttl_is_set_and_entries_expire(redis: RedisProcess) -> None:
    cache = make_cache(redis, models={"m": ModelCacheConfig(1, 1 << 20)})
    try:
        model = Model()
        await run(cache, model, rows(1))
        key = row_keys(KeyContext("m", 1, SIG, ALIASES), rows(1), 1)[0]
        assert redis.command("TTL", key).strip() in (b":1", b":0")
        await run(cache, model, rows(1))
        assert len(model.calls) == 1
        await asyncio.sleep(1.3)
        await run(cache, model, rows(1))
        assert len(model.calls) == 2
    finally:
        await cache.close()


async def test_no_cache_recomputes_and_refreshes(cache: ResultCache) -> None:
    model = Model()
    inputs = rows(1, 2)
    await run(cache, model, inputs)
    model.offset = 100.0  # the model changed behind the cache's back
    fresh = await run(cache, model, inputs, cache_control="no-cache")
    np.testing.assert_array_equal(fresh["y"], expected(inputs, 100.0))
    again = await run(cache, model, inputs)  # no-cache wrote the fresh rows
    np.testing.assert_array_equal(again["y"], expected(inputs, 100.0))
    assert len(model.calls) == 2
    assert count(cache, "bypasses", "m", "no_cache") == 1


async def test_no_store_neither_reads_nor_writes(cache: ResultCache, redis: RedisProcess) -> None:
    model = Model()
    await run(cache, model, rows(1), cache_control="no-store")
    assert redis.dbsize() == 0
    await run(cache, model, rows(2))
    await run(cache, model, rows(2), cache_control="no-store")
    assert len(model.calls) == 3
    assert count(cache, "bypasses", "m", "no_store") == 2


async def test_entries_over_max_size_are_skipped(redis: RedisProcess) -> None:
    cache = make_cache(redis, models={"m": ModelCacheConfig(60, 40)})
    try:
        model = Model()
        small = {"x": np.ones((2, 1), np.float32)}  # 4-byte rows fit in 40 bytes
        large = {"x": np.ones((2, 64), np.float32)}
        await run(cache, model, small)
        await run(cache, model, large)
        assert redis.dbsize() == 1  # the two identical small rows share one key
        assert count(cache, "bypasses", "m", "too_large") == 1
    finally:
        await cache.close()


async def test_single_flight_runs_concurrent_identical_misses_once(cache: ResultCache) -> None:
    model = Model(delay=0.1)
    inputs = rows(1, 2, 3)
    results = await asyncio.gather(*(run(cache, model, inputs) for _ in range(10)))
    assert len(model.calls) == 1
    for outputs in results:
        np.testing.assert_array_equal(outputs["y"], expected(inputs))
    assert count(cache, "coalesced", "m") == 27


async def test_single_flight_overlapping_requests_run_each_row_once(cache: ResultCache) -> None:
    model = Model(delay=0.05)
    a, b = rows(1, 2, 3), rows(3, 2, 9, 10)
    first, second = await asyncio.gather(run(cache, model, a), run(cache, model, b))
    assert sorted(v for c in model.calls for v in c[:, 0].tolist()) == [1, 2, 3, 9, 10]
    np.testing.assert_array_equal(first["y"], expected(a))
    np.testing.assert_array_equal(second["y"], expected(b))


async def test_followers_run_rows_themselves_when_the_leader_fails(cache: ResultCache) -> None:
    leader_model, follower_model = Model(delay=0.05), Model()
    leader_model.fail = ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
    inputs = rows(4, 5)
    leader = asyncio.create_task(run(cache, leader_model, inputs))
    await asyncio.sleep(0.01)
    outputs = await run(cache, follower_model, inputs)
    with pytest.raises(ServingError):
        await leader
    np.testing.assert_array_equal(outputs["y"], expected(inputs))
    assert len(follower_model.calls) == 1
    assert not cache._in_flight


async def test_follower_gives_up_at_its_deadline(cache: ResultCache) -> None:
    slow = Model(delay=0.5)
    leader = asyncio.create_task(run(cache, slow, rows(1)))
    await asyncio.sleep(0.01)
    deadline = asyncio.get_running_loop().time() + 0.05
    with pytest.raises(ServingError) as info:
        await run(cache, Model(), rows(1), deadline=deadline)
    assert info.value.code is Code.DEADLINE_EXCEEDED
    await leader  # the leader is unaffected


async def test_cancelled_leader_releases_its_rows(cache: ResultCache) -> None:
    slow = Model(delay=5)
    leader = asyncio.create_task(run(cache, slow, rows(1)))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(run(cache, Model(), rows(1)))
    await asyncio.sleep(0.01)
    leader.cancel()
    outputs = await asyncio.wait_for(follower, 2)
    np.testing.assert_array_equal(outputs["y"], expected(rows(1)))


async def test_whole_request_key_for_unbatchable_inputs(cache: ResultCache) -> None:
    model = Model()
    inputs = {"x": np.array([[1.0, 2.0]], np.float32), "scale": np.array(3.0, np.float32)}
    first = await run(cache, model, inputs)
    second = await run(cache, model, inputs)
    assert len(model.calls) == 1
    np.testing.assert_array_equal(first["y"], second["y"])


async def test_outputs_that_are_not_row_aligned_are_answered_but_not_cached(
    cache: ResultCache, redis: RedisProcess,
) -> None:
    model = Model()
    model.scalar_output = True
    outputs = await run(cache, model, rows(1, 2))
    assert outputs["y"].shape == ()
    assert redis.dbsize() == 0
    assert count(cache, "bypasses", "m", "unsplittable") == 1


async def test_mixed_rows_fall_back_to_the_model(cache: ResultCache, redis: RedisProcess) -> None:
    key = row_keys(KeyContext("m", 1, SIG, ALIASES), rows(1), 1)[0]
    redis.command("SET", key, encode_entry({"y": np.zeros(2, np.float64)}))  # wrong dtype
    model = Model()
    inputs = rows(1, 2)
    outputs = await run(cache, model, inputs)
    np.testing.assert_array_equal(outputs["y"], expected(inputs))
    assert outputs["y"].dtype == np.float32
    assert count(cache, "bypasses", "m", "mixed_rows") == 1


async def test_garbage_entry_is_a_miss(cache: ResultCache, redis: RedisProcess) -> None:
    key = row_keys(KeyContext("m", 1, SIG, ALIASES), rows(1), 1)[0]
    redis.command("SET", key, b"not an entry")
    model = Model()
    outputs = await run(cache, model, rows(1))
    np.testing.assert_array_equal(outputs["y"], expected(rows(1)))
    assert count(cache, "errors", "decode") == 1
    assert len(model.calls) == 1


async def test_models_without_cache_config_go_straight_to_the_model(
    cache: ResultCache, redis: RedisProcess,
) -> None:
    model = Model()
    await run(cache, model, rows(1), servable=ServableId("other", 1))
    await run(cache, model, rows(1), servable=ServableId("other", 1))
    assert len(model.calls) == 2 and redis.dbsize() == 0
    assert cache.describe("other") == {"cache": {"enabled": False}}


async def test_frozen_redis_costs_at_most_the_timeout(redis: RedisProcess) -> None:
    cache = make_cache(redis, timeout_ms=30.0)
    try:
        model = Model()
        redis.pause()
        started = time.perf_counter()
        outputs = await cache.run(V1, SIG, rows(1), ALIASES, cache_control=None,
                                  deadline=None, compute=model)
        assert time.perf_counter() - started < 0.25
        np.testing.assert_array_equal(outputs["y"], expected(rows(1)))
        assert count(cache, "errors", "get") == 1
    finally:
        redis.resume()
        await cache.close()


async def test_redis_killed_mid_load_and_restarted(redis: RedisProcess) -> None:
    """Zero failed requests while Redis dies and comes back; the breaker opens and closes."""
    cache = make_cache(redis, timeout_ms=50.0)
    states: list[BreakerState] = []
    cache.breaker.on_change.append(states.append)
    model = Model()
    failures = 0
    served = 0

    async def load(stop: asyncio.Event) -> None:
        nonlocal failures, served
        i = 0
        while not stop.is_set():
            inputs = rows(i % 20, 100 + i)  # half repeats, half new
            try:
                outputs = await cache.run(V1, SIG, inputs, ALIASES, cache_control=None,
                                          deadline=None, compute=model)
                np.testing.assert_array_equal(outputs["y"], expected(inputs))
                served += 1
            except Exception:
                failures += 1
            i += 1
            await asyncio.sleep(0.002)

    try:
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(stop)) for _ in range(4)]
        await asyncio.sleep(0.3)
        redis.kill()
        await asyncio.sleep(0.5)
        assert cache.breaker.state in (BreakerState.OPEN, BreakerState.HALF_OPEN)
        redis.start()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if cache.breaker.state is BreakerState.CLOSED:
                break
        hits_before = count(cache, "hits", "m")
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
        assert failures == 0 and served > 50
        assert BreakerState.OPEN in states and states[-1] is BreakerState.CLOSED
        assert count(cache, "hits", "m") > hits_before  # cached again after the restart
        assert count(cache, "errors", "get") > 0
    finally:
        await cache.close()


async def test_full_redis_still_serves(cache: ResultCache, redis: RedisProcess) -> None:
    redis.command("CONFIG", "SET", "maxmemory", "1")
    model = Model()
    for _ in range(3):
        outputs = await run(cache, model, rows(1))
        np.testing.assert_array_equal(outputs["y"], expected(rows(1)))
    assert count(cache, "errors", "set") == 3
    assert cache.breaker.state is BreakerState.CLOSED  # full is not down: reads still go


async def test_wrong_password_is_named_in_the_outage_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A misconfigured password never heals: the one WARNING line must say why."""
    with running_redis(tmp_path, ("--requirepass", "right")) as locked:
        url = f"redis://:wrong@127.0.0.1:{locked.port}/0"
        config = CacheConfig(url, parse_redis_url(url), models={"m": ModelCacheConfig(60, 1 << 20)},
                             timeout_ms=500.0, breaker_failure_threshold=2,
                             breaker_reset_seconds=30.0)
        cache = ResultCache(config)
        caplog.set_level("WARNING", logger="tfgate")
        try:
            model = Model()
            for value in (1.0, 2.0, 3.0):  # answered by the model every time
                outputs = await run(cache, model, rows(value))
                np.testing.assert_array_equal(outputs["y"], expected(rows(value)))
        finally:
            await cache.close()
    outage = [r.getMessage() for r in caplog.records if "cache breaker open" in r.getMessage()]
    assert len(outage) == 1
    assert "set-up failed" in outage[0]
    assert "WRONGPASS" in outage[0] or "invalid" in outage[0].lower()
