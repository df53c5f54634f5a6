"""Micro-benchmark of the result cache's Redis client alone: MGET of 8 keys, no HTTP.

Data path position: outside the server, beside bench/cache_bench.py. It measures only the
cache.run() -> RedisClient.mget() -> Redis hop, against a redis-server started here (owned
by its PID), with 1 caller and with 64 concurrent callers on one event loop. Reported per
level: calls/s, p50/p99 round trip, and the client process's CPU per call (the figure that
matters when the gateway's own CPU bounds throughput). Use it instead of bench.cache_bench
when the machine is too busy for end-to-end numbers.

    .venv/bin/python -m bench.redis_client_bench [--seconds 2] [--rounds 5]
        [--baseline path/to/other/cache_redis.py]

--baseline loads another implementation of app/cache/redis_client.py (e.g. an older one from
`git show`) and alternates rounds between the two, so both see the same machine noise.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import types

from bench import servers

KEYS = 8
VALUE_BYTES = 34  # one row of the dnn benchmark model as a cache entry (docs/cache.md)
LEVELS = (1, 64)


def load_module(path: pathlib.Path | None) -> types.ModuleType:
    if path is None:
        import app.cache.redis_client

        return app.cache.redis_client
    spec = importlib.util.spec_from_file_location(f"baseline_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


async def measure(module: types.ModuleType, port: int, concurrency: int, seconds: float,
                  timeout_seconds: float) -> dict[str, float]:
    """calls/s, latency percentiles and CPU per call of MGET(8 keys) at this concurrency."""
    client = module.RedisClient(module.RedisAddress(port=port), timeout_seconds)
    keys = [b"tfgate:c1:dnn:1:%064x" % i for i in range(KEYS)]
    try:
        await client.set_many([(k, b"v" * VALUE_BYTES) for k in keys], 600)
        latencies: list[int] = []
        failed = 0
        stop = False

        async def caller() -> None:
            nonlocal failed
            while not stop:
                started = time.perf_counter_ns()
                try:
                    values = await client.mget(keys)
                    assert len(values) == KEYS and values[0] is not None
                except module.RedisUnavailable:
                    failed += 1
                latencies.append(time.perf_counter_ns() - started)

        # warm up: connections opened, code paths hot
        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(min(0.5, seconds / 4))
        latencies.clear()
        failed = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        calls = len(latencies)
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    ordered = sorted(latencies)
    return {
        "calls_per_s": calls / (wall1 - wall0),
        "p50_us": ordered[len(ordered) // 2] / 1e3,
        "p99_us": ordered[int(len(ordered) * 0.99)] / 1e3,
        "cpu_us_per_call": (cpu1 - cpu0) / calls * 1e6 if calls else float("nan"),
        "failed": failed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_client_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed window per level")
    parser.add_argument("--rounds", type=int, default=5, help="medians over this many")
    parser.add_argument("--timeout_ms", type=float, default=20.0)
    parser.add_argument("--baseline", type=pathlib.Path, default=None,
                        help="another cache/redis_client.py to compare against, rounds alternating")
    args = parser.parse_args(argv)
    impls = {"current": load_module(None)}
    if args.baseline is not None:
        impls = {"baseline": load_module(args.baseline), **impls}
    port = servers.free_port()
    with tempfile.TemporaryDirectory() as work:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", servers.HOST, "--save", "",
             "--appendonly", "no", "--dir", work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            results: dict[tuple[str, int], list[dict[str, float]]] = {}
            for round_ in range(args.rounds):
                for name, module in impls.items():
                    for concurrency in LEVELS:
                        row = asyncio.run(measure(module, port, concurrency, args.seconds,
                                                  args.timeout_ms / 1e3))
                        results.setdefault((name, concurrency), []).append(row)
                        print(f"round {round_ + 1} {name} c={concurrency}: "
                              f"{row['calls_per_s']:,.0f}/s p50 {row['p50_us']:.0f} us "
                              f"p99 {row['p99_us']:.0f} us cpu {row['cpu_us_per_call']:.0f} "
                              f"us/call failed {row['failed']}", file=sys.stderr, flush=True)
        finally:
            redis.kill()
            redis.wait()
    print(f"\nMGET of {KEYS} keys ({VALUE_BYTES}-byte values), {args.rounds} rounds of "
          f"{args.seconds:.1f}s, medians; load average at the end: "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| client | callers | MGET/s | p50 us | p99 us | client CPU us/call | failed |")
    print("|---|---|---|---|---|---|---|")
    for (name, concurrency), rows in results.items():
        def med(field: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[field] for r in rows)

        print(f"| {name} | {concurrency} | {med('calls_per_s'):,.0f} | {med('p50_us'):.0f} | "
              f"{med('p99_us'):.0f} | {med('cpu_us_per_call'):.1f} | "
              f"{sum(r['failed'] for r in rows):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
