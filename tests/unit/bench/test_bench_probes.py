"""bench/probes.py's CPU readings: precise_cpu_seconds() reads a process's CPU time, every
thread, to the nanosecond (a 1 s phase of one busy core is 100 clock ticks, so
/proc/<pid>/stat alone reads it to 1%)."""

from __future__ import annotations

import os
import threading
import time

from bench.probes import precise_cpu_seconds, tree_precise_cpu_seconds


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_precise_cpu_seconds_counts_every_thread_below_a_clock_tick() -> None:
    before = precise_cpu_seconds(os.getpid())
    worker = threading.Thread(target=_spin, args=(0.004,))
    worker.start()
    _spin(0.004)
    worker.join()  # an ended thread's time still counts
    after = precise_cpu_seconds(os.getpid())
    # 8 ms of CPU over two threads: less than one 10 ms clock tick, still read
    assert 0.008 <= after - before < 0.0098  # clock ticks would read 0 or 10 ms


def test_a_live_thread_counts_and_the_reading_never_goes_back() -> None:
    stop = threading.Event()

    def spin_until_stopped() -> None:
        while not stop.is_set():
            _spin(0.001)

    worker = threading.Thread(target=spin_until_stopped)
    worker.start()
    try:
        first = precise_cpu_seconds(os.getpid())
        time.sleep(0.05)  # this thread sleeps; the other one spins
        second = precise_cpu_seconds(os.getpid())
    finally:
        stop.set()
        worker.join()
    assert second - first >= 0.02


def test_a_process_that_is_gone_reads_zero() -> None:
    assert precise_cpu_seconds(2**22 + 12345) == 0.0
    assert tree_precise_cpu_seconds(2**22 + 12345) == 0.0
