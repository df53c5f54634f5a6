"""Batcher semantics against a recording stand-in for the worker pool (no processes)."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from app.core.errors import Code, ServingError
from app.core.types import ServableId
from app.runtime.pool import RunOutcome
from app.serving.batcher import Batcher, batch_rows, padding_for, split_outputs
from app.settings.model_config import BatchingParameters
from workers import ipc

SID = ServableId("m", 1)


@dataclasses.dataclass
class _Worker:
    alive: bool = True


class RecordingPool:
    """Runs y = 2x on the concatenated batch; records every batch's row counts."""

    def __init__(self, delay_seconds: float = 0.0, fail_on: float | None = None) -> None:
        self.workers = [_Worker()]
        self.batches: list[tuple[list[int], int]] = []
        self.inner_shapes: list[dict | None] = []
        self.delay_seconds = delay_seconds
        self.fail_on = fail_on

    async def run(self, servable, signature, parts, output_aliases, pad_rows=0, inner_shapes=None):  # type: ignore[no-untyped-def]
        self.batches.append(([int(p["x"].shape[0]) for p in parts], pad_rows))
        self.inner_shapes.append(inner_shapes)
        await asyncio.sleep(self.delay_seconds)
        inner = (inner_shapes or {}).get("x")
        x = np.concatenate([ipc.pad_inner(p["x"], inner) if inner else p["x"] for p in parts])
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ServingError(Code.INVALID_ARGUMENT, "bad value")
        if pad_rows:
            x = np.concatenate([x, np.repeat(x[-1:], pad_rows, axis=0)])
        return RunOutcome({"y": x * 2}, 0.0, 0)


def _batcher(pool: RecordingPool, **params) -> Batcher:  # type: ignore[no-untyped-def]
    settings = BatchingParameters(**params)
    batcher = Batcher(pool, lambda model: settings)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def _x(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, np.float32).reshape(-1, 1)}


async def test_concurrent_requests_share_a_batch_and_get_their_rows() -> None:
    pool = RecordingPool(delay_seconds=0.05)
    batcher = _batcher(pool, max_batch_size=64, batch_timeout_micros=20_000)
    results = await asyncio.gather(
        *(batcher.submit(SID, "s", _x(i, i + 0.5), ["y"], None) for i in range(10))
    )
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"][:, 0], [2 * i, 2 * i + 1])
    assert sum(len(rows) for rows, _ in pool.batches) == 10
    assert max(sum(rows) for rows, _ in pool.batches) >= 10  # rows, not requests, counted
    await batcher.close()


async def test_batch_never_exceeds_max_batch_size_rows() -> None:
    pool = RecordingPool(delay_seconds=0.01)
    batcher = _batcher(
        pool, max_batch_size=5, batch_timeout_micros=10_000, max_enqueued_batches=100
    )
    await asyncio.gather(*(batcher.submit(SID, "s", _x(1, 2), ["y"], None) for _ in range(9)))
    assert all(sum(rows) <= 5 for rows, _ in pool.batches)
    await batcher.close()


async def test_timeout_counts_from_oldest_task() -> None:
    pool = RecordingPool()
    batcher = _batcher(pool, max_batch_size=100, batch_timeout_micros=200_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.create_task(batcher.submit(SID, "s", _x(1), ["y"], None))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(batcher.submit(SID, "s", _x(2), ["y"], None))
    await asyncio.gather(first, second)
    elapsed = loop.time() - started
    assert 0.15 < elapsed < 0.45  # ~0.2 s after the first, not 0.2 s after the second
    assert pool.batches == [([1, 1], 0)]
    await batcher.close()


async def test_full_queue_is_refused_at_once() -> None:
    pool = RecordingPool(delay_seconds=0.2)
    batcher = _batcher(pool, max_batch_size=2, max_enqueued_batches=1, batch_timeout_micros=0)
    tasks = [asyncio.create_task(batcher.submit(SID, "s", _x(1, 2), ["y"], None)) for _ in range(6)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, ServingError)]
    assert refused and all(r.code is Code.RESOURCE_EXHAUSTED for r in refused)
    assert any(isinstance(r, dict) for r in results)
    await batcher.close()


async def test_expired_deadline_dropped_before_running() -> None:
    pool = RecordingPool(delay_seconds=0.2)
    batcher = _batcher(pool, max_batch_size=1, batch_timeout_micros=0, max_enqueued_batches=10)
    loop = asyncio.get_running_loop()
    blocker = asyncio.create_task(batcher.submit(SID, "s", _x(1), ["y"], None))
    blocker2 = asyncio.create_task(batcher.submit(SID, "s", _x(1), ["y"], None))
    await asyncio.sleep(0.01)
    with pytest.raises(ServingError) as info:
        await batcher.submit(SID, "s", _x(7), ["y"], loop.time() + 0.05)
    assert info.value.code is Code.DEADLINE_EXCEEDED
    await asyncio.gather(blocker, blocker2)
    await asyncio.sleep(0.3)
    ran_values = len(pool.batches)
    assert ran_values == 2  # the expired request never reached the pool
    await batcher.close()


async def test_one_bad_request_does_not_fail_its_batch() -> None:
    pool = RecordingPool(delay_seconds=0.02, fail_on=13.0)
    batcher = _batcher(pool, max_batch_size=64, batch_timeout_micros=30_000)
    results = await asyncio.gather(
        batcher.submit(SID, "s", _x(1), ["y"], None),
        batcher.submit(SID, "s", _x(13), ["y"], None),
        batcher.submit(SID, "s", _x(3), ["y"], None),
        return_exceptions=True,
    )
    assert isinstance(results[1], ServingError) and results[1].message == "bad value"
    assert results[0]["y"][0, 0] == 2 and results[2]["y"][0, 0] == 6
    await batcher.close()


async def test_different_inner_shapes_go_to_separate_batches() -> None:
    pool = RecordingPool(delay_seconds=0.02)
    batcher = _batcher(pool, max_batch_size=64, batch_timeout_micros=30_000)
    a = {"x": np.ones((1, 2), np.float32)}
    b = {"x": np.ones((1, 3), np.float32)}
    ra, rb = await asyncio.gather(
        batcher.submit(SID, "s", a, ["y"], None), batcher.submit(SID, "s", b, ["y"], None)
    )
    assert ra["y"].shape == (1, 2) and rb["y"].shape == (1, 3)
    assert len(pool.batches) == 2
    await batcher.close()


async def test_ragged_inner_dims_share_a_padded_batch_when_enabled() -> None:
    pool = RecordingPool(delay_seconds=0.02)
    batcher = _batcher(
        pool, max_batch_size=64, batch_timeout_micros=30_000, pad_variable_length_inputs=True
    )
    a = {"x": np.array([[1.0, 2.0]], np.float32)}
    b = {"x": np.array([[3.0, 4.0, 5.0]], np.float32)}
    ra, rb = await asyncio.gather(
        batcher.submit(SID, "s", a, ["y"], None), batcher.submit(SID, "s", b, ["y"], None)
    )
    assert pool.batches == [([1, 1], 0)] and pool.inner_shapes == [{"x": (3,)}]
    # Inner padding stays in the outputs (TF Serving cannot know how outputs relate to
    # padded inputs); only the rows are split back.
    np.testing.assert_array_equal(ra["y"], [[2.0, 4.0, 2.0]])
    np.testing.assert_array_equal(rb["y"], [[6.0, 8.0, 10.0]])
    await batcher.close()


async def test_ragged_batch_with_an_empty_tensor_fails_only_that_request() -> None:
    pool = RecordingPool(delay_seconds=0.02)
    batcher = _batcher(
        pool, max_batch_size=64, batch_timeout_micros=30_000, pad_variable_length_inputs=True
    )
    good = {"x": np.ones((1, 2), np.float32)}
    empty = {"x": np.ones((1, 0), np.float32)}
    results = await asyncio.gather(
        batcher.submit(SID, "s", good, ["y"], None),
        batcher.submit(SID, "s", empty, ["y"], None),
        return_exceptions=True,
    )
    assert results[0]["y"].shape == (1, 2)
    # Alone, the empty request runs as it is (nothing to pad).
    assert results[1]["y"].shape == (1, 0)
    await batcher.close()


async def test_deadline_passing_while_the_batch_runs_answers_at_the_deadline() -> None:
    pool = RecordingPool(delay_seconds=0.5)
    batcher = _batcher(pool, max_batch_size=8, batch_timeout_micros=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServingError) as info:
        await batcher.submit(SID, "s", _x(1), ["y"], loop.time() + 0.05)
    assert info.value.code is Code.DEADLINE_EXCEEDED
    assert loop.time() - started < 0.4  # did not wait for the slow batch
    await asyncio.sleep(0.5)  # the batch's late result is dropped without error
    await batcher.close()


async def test_mixed_signatures_and_dtypes_never_share_a_batch() -> None:
    pool = RecordingPool(delay_seconds=0.02)
    batcher = _batcher(pool, max_batch_size=64, batch_timeout_micros=30_000)
    f32 = {"x": np.ones((1, 1), np.float32)}
    f64 = {"x": np.ones((1, 1), np.float64)}
    await asyncio.gather(
        batcher.submit(SID, "a", f32, ["y"], None),
        batcher.submit(SID, "b", f32, ["y"], None),
        batcher.submit(SID, "a", f64, ["y"], None),
        batcher.submit(ServableId("m", 2), "a", f32, ["y"], None),
    )
    assert len(pool.batches) == 4
    await batcher.close()


async def test_same_dtype_from_any_source_shares_a_batch_but_byte_orders_do_not() -> None:
    # The queue key holds dtype objects: equal dtypes made different ways are one queue.
    pool = RecordingPool(delay_seconds=0.02)
    batcher = _batcher(pool, max_batch_size=64, batch_timeout_micros=30_000)
    made = [
        {"x": np.ones((1, 2), np.float32)},
        {"x": np.frombuffer(np.ones(2, "<f4").tobytes(), "<f4").reshape(1, 2)},
        {"x": np.ones((1, 2), np.dtype("float32"))},
        {"x": np.ones((1, 2), ">f4")},
    ]
    results = await asyncio.gather(*(batcher.submit(SID, "s", x, ["y"], None) for x in made))
    assert sorted(rows for rows, _ in pool.batches) == [[1], [1, 1, 1]]
    for result in results:
        np.testing.assert_array_equal(result["y"], [[2, 2]])
    await batcher.close()


async def test_allowed_batch_sizes_pad_and_padding_is_removed() -> None:
    pool = RecordingPool(delay_seconds=0.02)
    batcher = _batcher(
        pool, max_batch_size=8, allowed_batch_sizes=(4, 8), batch_timeout_micros=30_000
    )
    results = await asyncio.gather(
        *(batcher.submit(SID, "s", _x(i), ["y"], None) for i in range(3))
    )
    assert [r["y"].shape for r in results] == [(1, 1)] * 3
    assert pool.batches == [([1, 1, 1], 1)]
    await batcher.close()


async def test_large_request_split_when_enabled_else_refused() -> None:
    """With splitting, max_batch_size still caps a request (input_batch_size_limit) and
    max_execution_batch_size caps each batch run."""
    pool = RecordingPool()
    batcher = _batcher(
        pool,
        max_batch_size=16,
        enable_large_batch_splitting=True,
        max_execution_batch_size=4,
        max_enqueued_batches=100,
    )
    result = await batcher.submit(SID, "s", _x(*range(10)), ["y"], None)
    np.testing.assert_array_equal(result["y"][:, 0], np.arange(10) * 2)
    assert all(sum(rows) <= 4 for rows, _ in pool.batches)
    with pytest.raises(ServingError) as too_big:
        await batcher.submit(SID, "s", _x(*range(20)), ["y"], None)
    assert too_big.value.message == "Task size 20 is larger than maximum input batch size 16"
    await batcher.close()
    strict = _batcher(RecordingPool(), max_batch_size=4)
    with pytest.raises(ServingError) as info:
        await strict.submit(SID, "s", _x(*range(10)), ["y"], None)
    assert info.value.message == "Task size 10 is larger than maximum input batch size 4"
    await strict.close()


async def test_batch_observers_get_the_thread_pool_name() -> None:
    seen: list[tuple[list[int], str]] = []
    params = BatchingParameters(max_batch_size=4, thread_pool_name="gpu_pool")
    batcher = Batcher(
        RecordingPool(), lambda servable: params,  # type: ignore[arg-type]
        observers=[lambda servable, rows, pad, queued, name: seen.append((rows, name))],
    )
    batcher.start()
    await batcher.submit(SID, "s", _x(1, 2), ["y"], None)
    assert seen == [([2], "gpu_pool")]
    await batcher.close()


async def test_batching_off_runs_each_request_alone() -> None:
    pool = RecordingPool()
    batcher = Batcher(pool, lambda model: None)  # type: ignore[arg-type]
    batcher.start()
    await asyncio.gather(*(batcher.submit(SID, "s", _x(1), ["y"], None) for _ in range(4)))
    assert pool.batches == [([1], 0)] * 4
    await batcher.close()


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"a": np.zeros((3, 2)), "b": np.zeros((3,))}, 3),
        ({"a": np.zeros((3, 2)), "b": np.zeros((2,))}, None),
        ({"a": np.float32(1.0)}, None),
        ({"a": np.zeros((0, 2))}, None),
    ],
)
def test_batch_rows(inputs, expected) -> None:  # type: ignore[no-untyped-def]
    assert batch_rows({k: np.asarray(v) for k, v in inputs.items()}) == expected


@pytest.mark.parametrize(
    ("rows", "allowed", "pad"),
    [(3, (4, 8), 1), (4, (4, 8), 0), (5, (4, 8), 3), (9, (4, 8), 0), (3, (), 0)],
)
def test_padding_for(rows: int, allowed: tuple[int, ...], pad: int) -> None:
    assert padding_for(rows, allowed) == pad


def test_split_outputs_checks_batch_dimension() -> None:
    with pytest.raises(ServingError):
        split_outputs({"y": np.zeros((3,))}, [1, 1], 2)
    pieces = split_outputs({"y": np.arange(5)}, [2, 1], 5)
    assert [p["y"].tolist() for p in pieces] == [[0, 1], [2]]
