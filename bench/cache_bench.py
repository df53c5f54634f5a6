"""The cache column of the benchmark: dnn (and a model-bound stand-in) through the Redis
result cache against cache off.

Data path position: outside the server, beside bench/suite.py. One tfgate serves each
SavedModel twice, as "dnn" (not cached) and "dnn_cached" ([models.dnn_cached.cache]), next
to a redis-server started here; so cache on and off are measured in one process, back to
back. Load: bench/loadgen.py's raw keep-alive HTTP/1.1 connections, closed loop, one row per
request drawn from a hot set of 100 rows (repeat_fraction of the requests) or a fresh,
never-seen row (the rest). Redis is flushed before every level. Writes bench/results/cache/
cache.json and the "Cache" section of docs/benchmarks.md (also kept in bench/cache_section.md
so bench/docs.py keeps it when it regenerates the file).

    .venv/bin/python -m bench.cache_bench [--quick] [--docs docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request

import numpy as np
import redis

from bench import loadgen, servers
from bench.loadgen import HttpTarget, LevelOptions
from bench.probes import cpu_seconds, http_get
from bench.stats import STABILITY_WINDOWS, Window, aggregate, stable
from bench.workloads import INPUT_SHAPES, rest_body

ROOT = servers.ROOT
BATCHING_FILE = ROOT / "bench" / "batching_parameters.pbtxt"
SECTION_FILE = ROOT / "bench" / "cache_section.md"
START, END = "<!-- cache-bench:start -->", "<!-- cache-bench:end -->"
HOT_ROWS = 100
BASE_MODELS = ("dnn", "slow")
# "slow" is y = 0.5x + 2 after a fixed spin per model call (per batch, not per row): a
# stand-in for a model whose run, not the gateway, bounds throughput.
SLOW_DELAY_MS = 50
SHAPES = {"dnn": INPUT_SHAPES["dnn"], "slow": (1,)}
CACHED_SUFFIX = "_cached"
PLACEHOLDER = b"1XXXXXX"
# Which Redis client app/cache/redis_client.py is, recorded with each run; runs saved before it
# was recorded used the former one.
CLIENT = (f"redis-py {redis.__version__} asyncio (app/cache/redis_client.py: the calls of one "
          "event-loop turn batched into one pipeline)")
FORMER_CLIENT = ("tfgate's former hand-written RESP2 client (one connection, "
                 "auto-pipelining; replaced by redis-py since)")


@dataclasses.dataclass(frozen=True)
class Level:
    name: str
    model: str
    concurrency: int
    repeat_fraction: float  # share of requests drawn from the hot set


LEVELS = (
    Level("dnn: cache off, 90% repeat", "dnn", 64, 0.9),
    Level("dnn: cache on, 90% repeat", "dnn_cached", 64, 0.9),
    Level("dnn: cache on, 100% hit", "dnn_cached", 64, 1.0),
    Level("dnn: cache on, 100% miss", "dnn_cached", 64, 0.0),
    Level("dnn: cache off, c=1", "dnn", 1, 1.0),
    Level("dnn: cache on, hit, c=1", "dnn_cached", 1, 1.0),
    Level("dnn: cache on, miss, c=1", "dnn_cached", 1, 0.0),
    # a model-bound case: what a hit saves grows with what a model run costs
    Level(f"slow ({SLOW_DELAY_MS} ms/run): cache off, 90% repeat", "slow", 64, 0.9),
    Level(f"slow ({SLOW_DELAY_MS} ms/run): cache on, 90% repeat", "slow_cached", 64, 0.9),
)
(OFF90, ON90, HIT64, MISS64, OFF1, HIT1, MISS1, SLOW_OFF90, SLOW_ON90) = (
    level.name for level in LEVELS)


class RequestMix:
    """Pre-built request bytes: HOT_ROWS hot rows, and fresh rows made by writing a counter
    into the first value of a template (fixed width, so Content-Length never changes).
    Fresh values are integers 1000000..1999999: exact in float32, so never two the same."""

    def __init__(self, host: str, port: int, model: str, repeat_fraction: float, seed: int):
        rng = np.random.default_rng(seed)
        shape = (1, *SHAPES[model.removesuffix(CACHED_SUFFIX)])
        path = f"/v1/models/{model}:predict"
        self.hot = [self._request(host, port, path, rest_body(rng.random(shape)))
                    for _ in range(HOT_ROWS)]
        template = self._template(rest_body(rng.random(shape)))
        head, _, tail = self._request(host, port, path, template).partition(PLACEHOLDER)
        self.fresh_head, self.fresh_tail = head, tail
        self.repeat_fraction = repeat_fraction
        self.random = random.Random(seed)
        self.counter = seed * 1000 % 1_000_000

    @staticmethod
    def _template(body: bytes) -> bytes:
        """The body with its first number replaced by PLACEHOLDER (7 characters)."""
        match = re.search(rb"(?<=\[)[-0-9.e+]+", body)
        assert match is not None
        return body[: match.start()] + PLACEHOLDER + body[match.end():]

    @staticmethod
    def _request(host: str, port: int, path: str, body: bytes) -> bytes:
        return HttpTarget(host, port, path, body).request_bytes()

    def next(self) -> bytes:
        if self.random.random() < self.repeat_fraction:
            return self.hot[self.random.randrange(HOT_ROWS)]
        self.counter = (self.counter + 1) % 1_000_000
        return self.fresh_head + b"1%06d" % self.counter + self.fresh_tail


class _MixConnection(loadgen._HttpConnection):
    def __init__(self, mix: RequestMix, on_response) -> None:  # type: ignore[no-untyped-def]
        super().__init__(b"", on_response)
        self.mix = mix

    def send(self, sent_ns: int) -> None:
        self.request = self.mix.next()
        super().send(sent_ns)


class _MixDriver(loadgen._HttpDriver):
    """loadgen's closed-loop HTTP driver, each request taken from a RequestMix."""

    def __init__(self, target: HttpTarget, recorder: loadgen.Recorder, mix: RequestMix):
        super().__init__(target, recorder)
        self.mix = mix

    async def connect(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            _, conn = await loop.create_connection(
                lambda: _MixConnection(self.mix, self._on_response),
                self.target.host, self.target.port,
            )
            self.connections.append(conn)


async def cache_counters(port: int, model: str) -> dict[str, float]:
    """A model's cache hits/misses/coalesced, for per-level deltas."""
    text = (await http_get(servers.HOST, port, "/metrics")).decode()
    out = {}
    for name in ("hits", "misses", "coalesced"):
        match = re.search(rf'^tfgate_cache_{name}{{model_name="{model}"}} (\S+)$', text, re.M)
        out[name] = float(match.group(1)) if match else 0.0
    match = re.search(r'^tfgate_cache_errors{op="get"} (\S+)$', text, re.M)
    out["redis_errors"] = float(match.group(1)) if match else 0.0
    return out


async def run_level(server: servers.RunningServer, level: Level, options: LevelOptions,
                    seed: int) -> dict:
    """Closed loop as loadgen.run_level, with the request mix; returns the aggregated
    level (its last STABILITY_WINDOWS windows) plus server-side cache counts."""
    port = server.spec.rest_port
    path = server.spec.path(level.model)
    mix = RequestMix(servers.HOST, port, level.model, level.repeat_fraction, seed)
    recorder = loadgen.Recorder()
    driver = _MixDriver(HttpTarget(servers.HOST, port, path, b""), recorder, mix)
    await driver.connect(level.concurrency)
    snapshots: list[tuple[dict[str, float], float]] = []
    windows: list[Window] = []
    try:
        driver.start_closed()
        await asyncio.sleep(options.warmup_seconds)
        recorder.cut()
        snapshots.append((await cache_counters(port, level.model), cpu_seconds(server.pid)))
        is_stable = False
        while len(windows) < options.max_windows:
            await asyncio.sleep(options.window_seconds)
            windows.append(recorder.cut())
            snapshots.append((await cache_counters(port, level.model), cpu_seconds(server.pid)))
            is_stable = stable(windows)
            if is_stable and len(windows) >= options.min_windows:
                break
    finally:
        driver.running = False
        await driver.stop(options.drain_seconds)
    result = aggregate(windows, target="tfgate", workload=level.name, protocol="rest",
                       concurrency=level.concurrency, request_rate=0.0, rows_per_request=1,
                       is_stable=is_stable)
    first, last = snapshots[-1 - min(STABILITY_WINDOWS, len(windows))], snapshots[-1]
    counts = {k: last[0][k] - first[0][k] for k in last[0]}
    done = result.requests + result.error_count
    looked_up = counts["hits"] + counts["misses"]
    return {
        "level": level.name, "model": level.model, "concurrency": level.concurrency,
        "seconds": sum(w.seconds for w in windows[-min(STABILITY_WINDOWS, len(windows)):]),
        "repeat_fraction": level.repeat_fraction, "throughput": result.throughput,
        "p50_ms": result.p50_us / 1e3, "p99_ms": result.p99_us / 1e3,
        "errors": result.error_count, "stable": result.stable,
        "hit_ratio": counts["hits"] / looked_up if looked_up else None,
        "coalesced": counts["coalesced"], "redis_errors": counts["redis_errors"],
        "gateway_cpu_us": (last[1] - first[1]) / done * 1e6 if done else None,
    }


class Redis:
    """redis-server on a free port, owned by PID."""

    def __init__(self, work: pathlib.Path) -> None:
        self.port = servers.free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", servers.HOST, "--save", "",
             "--appendonly", "no", "--dir", str(work)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )

    async def flush(self) -> None:
        reader, writer = await asyncio.open_connection(servers.HOST, self.port)
        writer.write(b"*1\r\n$7\r\nFLUSHDB\r\n")
        await reader.readline()
        writer.close()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def prepare(out: pathlib.Path, redis_port: int) -> tuple[pathlib.Path, pathlib.Path]:
    """Export each model, expose it a second time as <model>_cached, write the config."""
    models, work = out / "models", out / "work"
    for directory in (models, work):
        directory.mkdir(parents=True, exist_ok=True)
    config = f'[cache]\nurl = "redis://{servers.HOST}:{redis_port}/0"\ntimeout_ms = 20\n'
    for model in BASE_MODELS:
        if not (models / model / "1").is_dir():
            delay = ["--delay_ms", str(SLOW_DELAY_MS)] if model == "slow" else []
            subprocess.run([sys.executable, "-m", "workers.example_models", model,
                            str(models / model), *delay], check=True, cwd=ROOT,
                           capture_output=True)
        cached = models / (model + CACHED_SUFFIX)
        if not cached.exists():
            os.symlink(models / model, cached)
        config += (f"\n[models.{cached.name}.cache]\nenabled = true\ndeterministic = true\n"
                   "ttl_seconds = 600\n")
    path = work / "cache.toml"
    path.write_text(config)
    return models, path


def prewarm(server: servers.RunningServer, level: Level, seed: int) -> None:
    """Send every hot row once, so a hit level measures hits from its first window."""
    mix = RequestMix(servers.HOST, server.spec.rest_port, level.model, 1, seed)
    url = f"http://{servers.HOST}:{server.spec.rest_port}{server.spec.path(level.model)}"
    for request in mix.hot:
        body = request.split(b"\r\n\r\n", 1)[1]
        urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30).read()


async def sweep(server: servers.RunningServer, redis: Redis, repeats: int,
                options: LevelOptions, only: str = "") -> list[dict]:
    rows = []
    for repeat in range(repeats):
        for index, level in enumerate(LEVELS):
            if only not in level.name:
                continue
            seed = 1 + repeat * 100 + index
            await redis.flush()
            if level.repeat_fraction == 1.0 and level.model.endswith(CACHED_SUFFIX):
                await asyncio.to_thread(prewarm, server, level, seed)
            row = await run_level(server, level, options, seed)
            row["repeat"] = repeat
            rows.append(row)
            print(f"cache bench: r{repeat + 1} {level.name}: {row['throughput']:,.0f} req/s "
                  f"p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms "
                  f"errors {row['errors']}", file=sys.stderr, flush=True)
    return rows


# --- report ---


def _median(rows: list[dict], level: str, field: str) -> float:
    values = [r[field] for r in rows if r["level"] == level and r[field] is not None]
    return statistics.median(values) if values else float("nan")


def _ratio(rows: list[dict], a: str, b: str, field: str) -> float:
    """Median over repeats of a/b, pairing levels of the same repeat."""
    by_repeat = {}
    for r in rows:
        by_repeat.setdefault(r["repeat"], {})[r["level"]] = r[field]
    values = [v[a] / v[b] for v in by_repeat.values() if v.get(a) and v.get(b)]
    return statistics.median(values) if values else float("nan")


def summary(rows: list[dict]) -> dict[str, float]:
    return {
        "repeat90_vs_off_throughput": _ratio(rows, ON90, OFF90, "throughput"),
        "repeat90_vs_off_p99": _ratio(rows, ON90, OFF90, "p99_ms"),
        "hit_vs_miss_throughput_c64": _ratio(rows, HIT64, MISS64, "throughput"),
        "miss_vs_hit_p50_c1": _ratio(rows, MISS1, HIT1, "p50_ms"),
        "hit_p50_ms_c1": _median(rows, HIT1, "p50_ms"),
        "off_p50_ms_c1": _median(rows, OFF1, "p50_ms"),
        "slow_repeat90_vs_off_throughput": _ratio(rows, SLOW_ON90, SLOW_OFF90, "throughput"),
    }


def _failed(rows: list[dict], level: Level) -> str:
    """Lookups that failed (timed out) as a share of the level's requests, over repeats."""
    if not level.model.endswith(CACHED_SUFFIX):
        return "-"
    mine = [r for r in rows if r["level"] == level.name]
    served = sum(r["throughput"] * r.get("seconds", 0) for r in mine)
    failed = sum(r.get("redis_errors", 0) for r in mine)
    return f"{failed / served:.1%}" if served else f"{failed:.0f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(rows: list[dict], facts: dict[str, float], meta: dict) -> str:
    lines = [
        START, "## Cache", "",
        "Generated by `.venv/bin/python -m bench.cache_bench` (bench/cache_bench.py); rerun "
        "it to refresh this section. One tfgate serves each SavedModel twice, e.g. as `dnn` "
        "(no cache) and `dnn_cached` (Redis result cache, `timeout_ms = 20`), next to a local "
        "redis-server; levels run back to back. Each request is one row: with probability "
        "`repeat` one of 100 hot rows, else a never-seen row. Redis is flushed before every "
        "level; hit levels are pre-warmed. Closed loop over raw keep-alive HTTP/1.1 "
        f"(bench/loadgen.py), {meta['repeats']} repeat(s), medians; ratios per repeat, then "
        f"median. Started {meta['started']}, took {meta['minutes']:.1f} min, on the same "
        "2 shared cores as every other figure here (absolute numbers are low; read ratios). "
        f"Redis client: {meta.get('redis_client', FORMER_CLIENT)}.",
        "",
        "| level | c | req/s | p50 ms | p99 ms | server hit ratio | Redis lookups failed "
        "| gateway CPU us/req | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in LEVELS:
        hit = _median(rows, level.name, "hit_ratio")
        errors = sum(r["errors"] for r in rows if r["level"] == level.name)
        lines.append(
            f"| {level.name} | {level.concurrency} | "
            f"{_median(rows, level.name, 'throughput'):,.0f} | "
            f"{_median(rows, level.name, 'p50_ms'):.2f} | {_median(rows, level.name, 'p99_ms'):.2f}"
            f" | {'-' if hit != hit else f'{hit:.0%}'} | {_failed(rows, level)} | "
            f"{_median(rows, level.name, 'gateway_cpu_us'):.0f} | {errors} |"
        )
    speed = facts["miss_vs_hit_p50_c1"]
    lines += [
        "", "| target | measured | |", "|---|---|---|",
        f"| dnn c=64, 90% repeat: cache on / off | throughput "
        f"{facts['repeat90_vs_off_throughput']:.2f}x, p99 {facts['repeat90_vs_off_p99']:.2f}x "
        "| - |",
        f"| hits >= 1.5x faster than misses end to end (a request's time: p50 at c=1) | "
        f"miss/hit {speed:.2f}x (throughput at c=64, hit/miss: "
        f"{facts['hit_vs_miss_throughput_c64']:.2f}x) | {_verdict(speed >= 1.5)} |",
        f"| p50 of a hit at c=1 < 1 ms | {facts['hit_p50_ms_c1']:.2f} ms (cache off: "
        f"{facts['off_p50_ms_c1']:.2f} ms) | {_verdict(facts['hit_p50_ms_c1'] < 1.0)} |",
        f"| slow ({SLOW_DELAY_MS} ms per model run) c=64, 90% repeat: cache on / off | "
        f"throughput {facts['slow_repeat90_vs_off_throughput']:.2f}x | - |",
        "",
        "Reading it: a hit skips the batcher, the shared-memory hop and the model, but not "
        "HTTP and the JSON codec. Alone (c=1) a hit takes "
        f"{facts['hit_p50_ms_c1'] / facts['off_p50_ms_c1']:.0%} of a cache-off request's "
        "time (p50). At c=64, dnn's rows cost the worker little and the gateway's own CPU "
        "per request (the column above) bounds throughput with or without the cache; "
        "whether the cache's work per hit (keys, the Redis lookup, decode, merge) costs the "
        "gateway more or less than the batched model path of such a cheap model decides "
        "whether throughput rises or falls (compare the CPU column), and a miss with the "
        "cache on pays the lookup and the background SET on top. Where the model run bounds "
        "throughput (the slow model stands in for such a model), a hit saves a model run "
        "and throughput rises. Failed lookups are 20 ms timeouts, more of them when other "
        "work oversubscribes the 2 cores; each is served from the model, none failed a "
        "request. p99 at c=64 moves with that machine noise from run to run.",
        "", END,
    ]
    return "\n".join(lines)


def write_docs(section: str, docs_path: pathlib.Path) -> None:
    """Replace this section in docs/benchmarks.md (or append it); keep a copy beside the
    script for bench/docs.py, which regenerates the rest of that file."""
    SECTION_FILE.write_text(section + "\n")
    text = docs_path.read_text() if docs_path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    docs_path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 repeat, short windows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="", help="run only levels whose name has this")
    parser.add_argument("--render", type=pathlib.Path, default=None,
                        help="no run: re-render the section from this cache.json")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results" / "cache")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"),
                        help="file whose Cache section is replaced ('' to skip)")
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        section = render(saved["levels"], saved["summary"], saved)
        if args.docs:
            write_docs(section, pathlib.Path(args.docs))
        print(section)
        return 0
    repeats = 1 if args.quick else args.repeats
    options = (LevelOptions(warmup_seconds=0.5, window_seconds=0.5, max_windows=4)
               if args.quick else
               LevelOptions(warmup_seconds=1.0, window_seconds=1.0, max_windows=6))
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    redis = Redis(args.out)
    server = None
    try:
        models, config = prepare(args.out, redis.port)
        spec = servers.tfgate_spec(models, args.out / "work", BATCHING_FILE,
                                   [f"--config={config}"])
        server = servers.RunningServer(spec, args.out / "work")
        for model in BASE_MODELS:
            server.wait_ready(model, rest_body(np.zeros((1, *SHAPES[model]))))
        rows = asyncio.run(sweep(server, redis, repeats, options, args.only))
    finally:
        if server is not None:
            server.stop()
        redis.stop()
    facts = summary(rows)
    meta = {"repeats": repeats, "started": started, "minutes": (time.monotonic() - clock) / 60,
            "redis_client": CLIENT}
    (args.out / "cache.json").write_text(json.dumps({"levels": rows, "summary": facts,
                                                     **meta}, indent=1))
    section = render(rows, facts, meta)
    if args.docs:
        write_docs(section, pathlib.Path(args.docs))
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
