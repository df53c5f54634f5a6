"""app/core/heap_trim.py: abandoned request bytes add up to one delayed malloc_trim, at most
one at a time, none after the server stops; and glibc's malloc_trim is really found here."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.core.heap_trim import HeapTrim, _glibc_malloc_trim


class FakeTrim:
    """Stands in for malloc_trim: records its calls (and their thread), may block or fail."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.threads: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.fail = fail

    def __call__(self, pad: int) -> int:
        self.release.wait(5)
        self.calls.append(pad)
        self.threads.append(threading.get_ident())
        if self.fail:
            raise OSError("no")
        return 1


async def settle(heap: HeapTrim) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if heap.pending is None:
            return


async def test_below_the_threshold_nothing_is_trimmed() -> None:
    trim = FakeTrim()
    heap = HeapTrim("test", after_bytes=100, delay_seconds=0.01, trim=trim)
    loop = asyncio.get_running_loop()
    heap.dropped(60, loop)
    heap.dropped(39, loop)
    await asyncio.sleep(0.05)
    assert trim.calls == [] and heap.pending is None and heap.dropped_bytes == 99


async def test_dropped_bytes_add_up_to_one_trim_off_the_loop_thread() -> None:
    trim = FakeTrim()
    heap = HeapTrim("test", after_bytes=100, delay_seconds=0.05, trim=trim)
    loop = asyncio.get_running_loop()
    for _ in range(10):  # one connection's calls end together
        heap.dropped(30, loop)
    assert trim.calls == [] and heap.pending is not None  # not before the delay
    await settle(heap)
    assert trim.calls == [0] and heap.trims == 1 and heap.dropped_bytes == 0
    assert trim.threads[0] != threading.get_ident()  # the loop's thread goes on meanwhile


async def test_bytes_dropped_during_a_trim_get_the_next_one() -> None:
    trim = FakeTrim()
    heap = HeapTrim("test", after_bytes=100, delay_seconds=0.01, trim=trim)
    loop = asyncio.get_running_loop()
    trim.release.clear()  # the first trim blocks until released
    heap.dropped(100, loop)
    await asyncio.sleep(0.05)
    assert isinstance(heap.pending, asyncio.Future)  # running
    heap.dropped(150, loop)  # no second trim while one runs
    heap.dropped(150, loop)
    trim.release.set()
    await settle(heap)
    await settle(heap)
    assert trim.calls == [0, 0] and heap.trims == 2 and heap.dropped_bytes == 0


async def test_a_failed_trim_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trim = FakeTrim(fail=True)
    heap = HeapTrim("test", after_bytes=10, delay_seconds=0.01, trim=trim)
    loop = asyncio.get_running_loop()
    heap.dropped(10, loop)
    await settle(heap)
    assert "malloc_trim failed" in caplog.text
    heap.dropped(10, loop)
    await settle(heap)
    assert len(trim.calls) == 2


async def test_a_stopped_server_runs_no_scheduled_trim() -> None:
    trim = FakeTrim()
    heap = HeapTrim("test", after_bytes=10, delay_seconds=0.05, trim=trim)
    heap.dropped(10, asyncio.get_running_loop())
    heap.cancel()
    await asyncio.sleep(0.1)
    assert trim.calls == [] and heap.pending is None


async def test_without_malloc_trim_bytes_are_only_counted() -> None:
    heap = HeapTrim("test", after_bytes=10, delay_seconds=0.01)
    heap.trim = None  # as on a C library without malloc_trim
    heap.dropped(100, asyncio.get_running_loop())
    assert heap.pending is None and heap.dropped_bytes == 100


def test_glibc_malloc_trim_is_found_and_runs() -> None:
    trim = _glibc_malloc_trim()
    assert trim is not None  # the image and CI run Debian's glibc
    assert trim(0) in (0, 1)
