"""Server-side counters sampled at every measurement window boundary.

Data path position: beside the load. Reads tfgate's Prometheus text (queueing, runtime and
executed-batch histograms) over a plain HTTP GET and the CPU time of server processes from
/proc/<pid>/stat, so a level can report queue/compute time, mean batch size and CPU per
request as deltas over exactly the windows it reports.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Prometheus series (summed over labels) -> probe key.
METRIC_KEYS = {
    ":tensorflow:serving:batching_session:queuing_latency_sum": "queue_sum_us",
    ":tensorflow:serving:batching_session:queuing_latency_count": "queue_count",
    # the worker's session time per run (runtime_latency spans a request's whole hand-off)
    "tfgate_worker_run_latency_sum": "runtime_sum_us",
    "tfgate_worker_run_latency_count": "runtime_count",
    "tfgate_executed_batch_rows_sum": "batch_rows_sum",
    "tfgate_executed_batch_rows_count": "batch_rows_count",
}


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of the series in METRIC_KEYS over its label sets."""
    out = dict.fromkeys(METRIC_KEYS.values(), 0.0)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = line.find("{")
        if name_end < 0:
            name_end = line.find(" ")
        key = METRIC_KEYS.get(line[:name_end])
        if key is not None:
            out[key] += float(line.rsplit(" ", 1)[1])
    return out


async def http_get(host: str, port: int, path: str, timeout_seconds: float = 10.0) -> bytes:
    """One GET with Connection: close; returns the body (no chunked support needed here)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout_seconds)
    finally:
        writer.close()
    return data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def precise_cpu_seconds(pid: int) -> float:
    """CPU time of one process, all its threads (ended ones too), to the nanosecond: the
    kernel's CPU-time clock of the process, where /proc/<pid>/stat counts clock ticks (10 ms,
    1% of a 1 s phase of one busy core). 0 if the process is gone."""
    try:
        # Linux's clock id for another process's CPU time (MAKE_PROCESS_CPUCLOCK(pid,
        # CPUCLOCK_SCHED)), what clock_getcpuclockid(3) returns
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        return cpu_seconds(pid)


def tree_precise_cpu_seconds(pid: int) -> float:
    """precise_cpu_seconds() of a process and its direct children (tfgate's workers)."""
    return precise_cpu_seconds(pid) + sum(precise_cpu_seconds(c) for c in children(pid))


def children(pid: int) -> list[int]:
    """Direct children of pid (tfgate's workers, uvicorn's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def tree_cpu_seconds(pid: int) -> float:
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))


class ServerProbe:
    """Samples one server: CPU of its main process (the gateway) and of its whole tree, plus
    tfgate's metrics when `metrics_port` is set."""

    def __init__(self, pid: int, metrics_port: int | None = None, host: str = "127.0.0.1"):
        self.pid = pid
        self.metrics_port = metrics_port
        self.host = host

    async def __call__(self) -> dict[str, float]:
        snapshot = {
            "gateway_cpu_s": cpu_seconds(self.pid),
            "server_cpu_s": tree_cpu_seconds(self.pid),
        }
        if self.metrics_port:
            body = await http_get(self.host, self.metrics_port, "/metrics")
            snapshot.update(parse_prometheus(body.decode()))
        return snapshot


def delta(snapshots: Sequence[dict[str, float]], windows: int) -> dict[str, float]:
    """Counter growth over the last `windows` windows (snapshots has one more entry)."""
    if len(snapshots) < 2:
        return {}
    first = snapshots[max(0, len(snapshots) - 1 - windows)]
    last = snapshots[-1]
    return {k: last[k] - first.get(k, 0.0) for k in last}
