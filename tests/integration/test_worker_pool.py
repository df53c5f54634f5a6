"""Worker supervision end to end: kill -9 mid-load, the hang watchdog, two CPU workers,
and TF thread and load thread flags reaching the workers, against a real server."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import pathlib
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.slow


def predict(url: str, model: str, value: float, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model}:predict", json={"instances": [[value]]},
                      timeout=timeout)


def restarts(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tfgate_worker_restarts{"))


def wait_for(condition, timeout_seconds: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def shm_segments(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"tfgate.{pid}.")]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export_slow(base: pathlib.Path, delay_ms: int) -> pathlib.Path:
    """The slow example model (y = 0.5x + 2 after delay_ms of spinning) under `base`."""
    subprocess.run(
        [sys.executable, "-m", "workers.example_models", "slow", str(base),
         "--delay_ms", str(delay_ms)],
        check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    return base


def _start(args: list[str], tmp: pathlib.Path, name: str) -> ServerProcess:
    return ServerProcess(args, tmp / f"{name}.log").start()


def batches_started(url: str) -> float:
    """Batches the batcher handed to a worker (TF Serving's processed_batch_size count)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    prefix = ":tensorflow:serving:batching_session:processed_batch_size_count{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def test_kill_9_mid_load_fails_only_in_flight_then_recovers(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # 1.5 s per batch, and the kill waits until a batch is in the worker: on a loaded machine
    # a fixed sleep after sending could kill the worker before any request reached it.
    slow = export_slow(tmp_path / "slow", delay_ms=1500)
    proc = _start([
        "--model_name=slow", f"--model_base_path={slow}", "--enable_batching",
        "--enable_model_warmup=false",
    ], tmp_path, "kill")
    try:
        (worker,) = proc.child_pids()
        assert len(shm_segments(proc.process.pid)) == 2  # request + response arenas
        started = batches_started(proc.rest_url)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            first = [pool.submit(predict, proc.rest_url, "slow", float(i)) for i in range(8)]
            deadline = time.monotonic() + 60
            while batches_started(proc.rest_url) == started:  # the first batch is running
                assert time.monotonic() < deadline, "no batch reached the worker"
                time.sleep(0.01)
            os.kill(worker, signal.SIGKILL)
            # Requests sent after the kill wait for the restarted worker instead of failing.
            later = [pool.submit(predict, proc.rest_url, "slow", 1.0) for _ in range(4)]
            first_codes = [f.result().status_code for f in first]
            later_codes = [f.result().status_code for f in later]
        assert set(first_codes) <= {200, 503} and 503 in first_codes
        unavailable = next(f.result() for f in first if f.result().status_code == 503)
        assert "exited while handling the request" in unavailable.json()["error"]
        assert later_codes == [200] * 4
        assert predict(proc.rest_url, "slow", 4.0).json() == {"predictions": [[4.0]]}
        assert restarts(proc.rest_url) == 1
        (new_worker,) = proc.child_pids()
        assert new_worker != worker
        # The dead worker's slabs were unlinked; the new worker has its own two.
        assert len(shm_segments(proc.process.pid)) == 2
    finally:
        proc.stop()


def test_hung_worker_is_killed_by_the_watchdog(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hang = export_slow(tmp_path / "hang", delay_ms=4000)
    (tmp_path / "models.config").write_text(
        "model_config_list {\n"
        f'config {{ name: "hang" base_path: "{hang}" model_platform: "tensorflow" }}\n'
        f'config {{ name: "tiny" base_path: "{model_zoo.base_path("tiny")}" '
        'model_platform: "tensorflow" }\n}\n'
    )
    proc = _start([
        f"--model_config_file={tmp_path / 'models.config'}", "--worker_watchdog_seconds=1",
        "--enable_model_warmup=false",
    ], tmp_path, "watchdog")
    try:
        response = predict(proc.rest_url, "hang", 1.0)
        assert response.status_code == 503
        wait_for(lambda: restarts(proc.rest_url) == 1)
        assert predict(proc.rest_url, "tiny", 2.0).json() == {"predictions": [[3.0]]}
    finally:
        proc.stop()


def test_two_cpu_workers_both_serve(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = _start([
        "--model_name=slow", f"--model_base_path={model_zoo.base_path('slow')}",
        "--num_cpu_workers=2",
    ], tmp_path, "two")
    try:
        workers = proc.child_pids()
        assert len(workers) == 2
        before = {pid: cpu_seconds(pid) for pid in workers}
        # The slow model spins for 300 ms per call: a worker that ran calls shows the CPU.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = [r.status_code for r in pool.map(
                lambda i: predict(proc.rest_url, "slow", float(i)), range(8))]
        assert codes == [200] * 8
        used = {pid: cpu_seconds(pid) - before[pid] for pid in workers}
        # An idle worker uses ~0 s; one that ran even a single call (300 ms of spinning,
        # less CPU when the machine is contended) clearly more.
        assert all(seconds > 0.05 for seconds in used.values()), used
    finally:
        proc.stop()


def test_tensorflow_thread_flags_reach_the_workers(model_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = _start([
        "--model_name=tiny", f"--model_base_path={model_zoo.base_path('tiny')}",
        "--tensorflow_intra_op_parallelism=3", "--tensorflow_inter_op_parallelism=2",
        "--num_load_threads=2",
    ], tmp_path, "threads")
    try:
        (worker,) = proc.child_pids()
        with open(f"/proc/{worker}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        from app.core import protos

        config = protos.config_pb2.ConfigProto.FromString(
            base64.b64decode(argv[argv.index(b"--session-config") + 1])
        )
        assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (3, 2)
        assert argv[argv.index(b"--load-threads") + 1] == b"2"
        assert predict(proc.rest_url, "tiny", 2.0).json() == {"predictions": [[3.0]]}
    finally:
        proc.stop()
