"""Hot-swap benchmark: versions arrive and roll back under continuous load, and memory does
not grow across load/unload cycles.

    .venv/bin/python -m bench.hotswap [--seconds 60] [--cycles 30] [--out bench/results]

Phase 1 (availability): a tfgate server serves the `dnn` model; a raw asyncio HTTP/1.1
client keeps 16 requests in flight for `--seconds`; after a steady-state stretch, 10 new
versions are published (copied aside, renamed into place) a few seconds apart, then the
newest is deleted (rollback). Every version carries `--warmup_records` warmup requests
(assets.extra/tf_serving_warmup_requests), replayed `--warmup_iterations` times while it
loads, so a load takes as long as a warmed-up production load does. Reports failed requests,
p99 in steady state vs during swaps, and the slowest request during swaps (a load that
blocked serving would show here).
Phase 2 (memory): `--cycles` further versions are published one at a time (each load
unloads the previous one); the RSS of the whole process tree (gateway + workers) after the
first cycle is compared with the RSS after the last. Prints a JSON summary and writes it to
--out/hotswap.json. Traffic goes to 127.0.0.1 only; every process started here is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.loadgen import HttpTarget, LevelOptions, run_level
from bench.probes import children
from bench.servers import RunningServer, ServerSpec, free_port
from bench.stats import Window, percentile_ns
from bench.workloads import rest_body

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTION = pathlib.Path(__file__).resolve().parent / "hotswap_section.md"
MODEL = "dnn"
CONCURRENCY = 16
WINDOW_SECONDS = 1.0
# One PredictionLog per record, TF Serving's warmup file format; `x` is dnn's 256 floats.
WRITE_WARMUP = """
import sys
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
path, count = sys.argv[1], int(sys.argv[2])
with tf.io.TFRecordWriter(path) as writer:
    for i in range(count):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "dnn"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[i / count] * 256], tf.float32))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())
"""


def export_model(base: pathlib.Path, warmup_records: int) -> pathlib.Path:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [sys.executable, "-m", "workers.example_models", MODEL, str(base), "--version", "1"],
        check=True,
        cwd=ROOT,
        env=env,
    )
    if warmup_records:
        extra = base / "1" / "assets.extra"
        extra.mkdir()
        subprocess.run(
            [sys.executable, "-c", WRITE_WARMUP, str(extra / "tf_serving_warmup_requests"),
             str(warmup_records)],
            check=True,
            env=env,
        )
    return base / "1"


def publish(source: pathlib.Path, base: pathlib.Path, version: int) -> None:
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    staging.rename(base / str(version))


def tree_rss_bytes(pid: int) -> int:
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except OSError:
            continue
    return total


def serving_version(port: int) -> set[int]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=5) as r:
        status = json.loads(r.read())["model_version_status"]
    return {int(s["version"]) for s in status if s["state"] == "AVAILABLE"}


def wait_serving(port: int, want: set[int], timeout: float = 120.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if serving_version(port) == want:
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{MODEL} did not reach versions {want}")


async def availability_phase(
    server: RunningServer, base: pathlib.Path, source: pathlib.Path, seconds: float
) -> dict[str, object]:
    body = request_body()
    target = HttpTarget("127.0.0.1", server.spec.rest_port, server.spec.path(MODEL), body)
    windows_total = int(seconds / WINDOW_SECONDS)
    options = LevelOptions(
        concurrency=CONCURRENCY,
        warmup_seconds=1.0,
        window_seconds=WINDOW_SECONDS,
        min_windows=windows_total,
        max_windows=windows_total,
    )
    steady_windows = windows_total // 6
    swap_marks: list[float] = []

    async def swapper() -> None:
        await asyncio.sleep(1.0 + steady_windows * WINDOW_SECONDS)
        interval = (seconds - steady_windows * WINDOW_SECONDS - 8) / 11
        for version in range(2, 12):
            swap_marks.append(time.perf_counter())
            await asyncio.to_thread(publish, source, base, version)
            await asyncio.sleep(interval)
        swap_marks.append(time.perf_counter())
        await asyncio.to_thread(shutil.rmtree, base / "11")  # rollback to 10

    swapping = asyncio.create_task(swapper())
    windows, _, _ = await run_level(target, options)
    await swapping
    steady = windows[:steady_windows]
    during = windows[steady_windows:]
    return {
        "requests": sum(len(w.latencies_ns) for w in windows),
        "failed_requests": sum(sum(w.errors.values()) for w in windows),
        "errors": _merge_errors(windows),
        "steady_p99_ms": _p99_ms(steady),
        "swap_p99_ms": _p99_ms(during),
        "swap_p99_over_steady": _p99_ms(during) / _p99_ms(steady),
        "worst_window_p99_ms": max(w.percentile_us(99) for w in during) / 1e3,
        "slowest_swap_ms": max(max(w.latencies_ns, default=0) for w in during) / 1e6,
        "versions_published": 10,
        "rolled_back_to": 10,
        "serving_after": sorted(serving_version(server.spec.rest_port)),
    }


def request_body() -> bytes:
    return rest_body(np.random.default_rng(0).random((1, 256), dtype=np.float32))


def _p99_ms(windows: list[Window]) -> float:
    return percentile_ns([v for w in windows for v in w.latencies_ns], 99) / 1e6


def _merge_errors(windows: list[Window]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for w in windows:
        for kind, count in w.errors.items():
            merged[kind] = merged.get(kind, 0) + count
    return merged


def memory_phase(
    server: RunningServer, base: pathlib.Path, source: pathlib.Path, cycles: int
) -> dict[str, object]:
    port = server.spec.rest_port
    first_version = max(serving_version(port)) + 1
    rss: list[int] = []
    swap_seconds: list[float] = []
    for i in range(cycles):
        version = first_version + i
        publish(source, base, version)
        swap_seconds.append(wait_serving(port, {version}))
        previous = base / str(version - 1)
        if previous.exists():
            shutil.rmtree(previous)  # keep the disk small; already unloaded
        time.sleep(0.3)
        rss.append(tree_rss_bytes(server.process.pid))
    return {
        "cycles": cycles,
        "rss_after_first_mb": rss[0] / 2**20,
        "rss_after_last_mb": rss[-1] / 2**20,
        "rss_growth_fraction": rss[-1] / rss[0] - 1,
        "median_swap_seconds": float(np.median(swap_seconds)),
    }


def render(summary: dict, seconds: float, cycles: int) -> str:
    a, m = summary["availability"], summary["memory"]
    records, iterations = summary["warmup_records"], summary["warmup_iterations"]
    ok_fail = "met" if a["failed_requests"] == 0 else "**missed**"
    ok_p99 = "met" if a["swap_p99_over_steady"] <= 3 else "**missed**"
    ok_rss = "met" if m["rss_growth_fraction"] <= 0.10 else "**missed**"
    return "\n".join(
        [
            "## Hot swap: versions arriving and rolling back under load",
            "",
            f"Command: `.venv/bin/python -m bench.hotswap --seconds {seconds:g} --cycles {cycles} "
            f"--warmup_records {records} --warmup_iterations {iterations}`. "
            f"REST load at concurrency {CONCURRENCY} on `{MODEL}` for {seconds:g} s; after a steady "
            "stretch 10 new versions are published (copied aside, renamed into place) and the newest "
            "is then deleted (rollback); then the memory phase publishes one version at a time. "
            f"Each version carries {records} warmup records, replayed {iterations} times while it "
            "loads (on the worker's loader thread, beside serving).",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| requests / failed | {a['requests']:,} / {a['failed_requests']} | zero failed: {ok_fail} |",
            f"| p99 steady / during swaps | {a['steady_p99_ms']:.1f} ms / {a['swap_p99_ms']:.1f} ms "
            f"({a['swap_p99_over_steady']:.2f}x) | within 3x: {ok_p99} |",
            f"| worst 1 s window p99 during swaps | {a['worst_window_p99_ms']:.1f} ms | |",
            f"| slowest request during swaps | {a['slowest_swap_ms']:.1f} ms | |",
            f"| serving after rollback | {a['serving_after']} | version 10 |",
            f"| process-tree RSS after cycle 1 / {m['cycles']} | {m['rss_after_first_mb']:.0f} MiB / "
            f"{m['rss_after_last_mb']:.0f} MiB ({m['rss_growth_fraction']:+.1%}) | within 10%: {ok_rss} |",
            f"| median publish-to-serving time | {m['median_swap_seconds']:.2f} s | |",
            "",
        ]
    )


def start_server(base: pathlib.Path, work: pathlib.Path, warmup_iterations: int) -> RunningServer:
    rest, grpc_port = free_port(), free_port()
    argv = [
        str(pathlib.Path(sys.executable).parent / "tensorflow_model_server"),
        f"--port={grpc_port}",
        f"--rest_api_port={rest}",
        "--rest_api_host=127.0.0.1",
        "--grpc_host=127.0.0.1",
        f"--model_name={MODEL}",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=1",
        "--enable_batching",
        f"--num_request_iterations_for_warmup={warmup_iterations}",
        "--tensorflow_model_server_log_level=warning",
    ]
    spec = ServerSpec("tfgate-hotswap", argv, rest, "/v1/models/{model}:predict", grpc_port, True)
    return RunningServer(spec, work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotswap", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--warmup_records", type=int, default=1000, help="0..1000 per version")
    parser.add_argument("--warmup_iterations", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tfgate-hotswap-") as tmp:
        work = pathlib.Path(tmp)
        base = work / MODEL
        source = export_model(work / "export", args.warmup_records)
        publish(source, base, 1)
        server = start_server(base, work, args.warmup_iterations)
        try:
            server.wait_ready(MODEL, request_body())
            availability = asyncio.run(availability_phase(server, base, source, args.seconds))
            memory = memory_phase(server, base, source, args.cycles)
        finally:
            server.stop()
    summary = {
        "availability": availability,
        "memory": memory,
        "model": MODEL,
        "concurrency": CONCURRENCY,
        "warmup_records": args.warmup_records,
        "warmup_iterations": args.warmup_iterations,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hotswap.json").write_text(json.dumps(summary, indent=1))
    SECTION.write_text(render(summary, args.seconds, args.cycles))
    print(SECTION.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
