"""The whole benchmark in one command: `tfgate bench suite [--quick]`.

Order: export the SavedModels -> codec and IPC micro-benchmarks -> in-process limits ->
start tfgate (tuned: bench/batching_parameters.pbtxt + bench/tfgate.toml), tfgate "stock" (the
batching file TF Serving users typically write, bench/batching_stock.pbtxt, no TOML), tfgate
"alt" (tuned, on the other gRPC transport), the naive server, the constant-reply server (REST
and gRPC ceilings) and BentoML side by side -> for each repeat, workload and concurrency, run
every server back to back (so ratios come from the same minutes of the same machine); at
FORMAT_CONCURRENCY the stock server and alt's gRPC too, and each model's
bodies in the EXTRA_FORMATS number formats as well (tfgate, stock, naive) -> large requests ->
stop everything -> write bench/results/ (perf_analyzer CSVs, raw CSV, results.json, PNG plots)
and docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

from bench import micro, report, servers
from bench.loadgen import GrpcTarget, HttpTarget, LevelOptions, run_level
from bench.probes import ServerProbe, delta
from bench.progress import Progress
from bench.stats import STABILITY_WINDOWS, LevelResult, SuiteResults, aggregate
from bench.workloads import (
    EXTRA_FORMATS,
    FORMAT_CONCURRENCY,
    LARGE,
    LARGE_CONCURRENCY,
    MODELS,
    Workload,
)

ROOT = servers.ROOT
BATCHING_FILE = ROOT / "bench" / "batching_parameters.pbtxt"
CONFIG_FILE = ROOT / "bench" / "tfgate.toml"  # per-model batching overrides
STOCK_BATCHING_FILE = ROOT / "bench" / "batching_stock.pbtxt"  # no TOML beside it
FORMAT_SERVERS = ("tfgate", "stock", "naive")
ALT_GRPC = servers.ALT_NAME  # tuned tfgate on the gRPC transport the main one does not run


@dataclasses.dataclass(frozen=True)
class SuiteOptions:
    out_dir: pathlib.Path
    docs_path: pathlib.Path | None
    quick: bool = False
    repeats: int = 3
    concurrencies: tuple[int, ...] = (1, 16, 64, 256)
    models: tuple[str, ...] = MODELS
    bentoml: bool = True
    level: LevelOptions = dataclasses.field(
        default_factory=lambda: LevelOptions(warmup_seconds=1.0, window_seconds=1.0,
                                             max_windows=4))
    tfgate_args: tuple[str, ...] = ()
    command: str = ""


def quick_options(out_dir: pathlib.Path, docs_path: pathlib.Path | None, **kw) -> SuiteOptions:  # type: ignore[no-untyped-def]
    return SuiteOptions(
        out_dir, docs_path, quick=True, repeats=1, concurrencies=(1, 64),
        level=LevelOptions(warmup_seconds=0.5, window_seconds=0.5, max_windows=4), **kw,
    )




def export_models(model_root: pathlib.Path, names: tuple[str, ...]) -> None:
    for name in names:
        if not (model_root / name / "1").is_dir():
            subprocess.run(
                [sys.executable, "-m", "workers.example_models", name, str(model_root / name)],
                check=True, cwd=ROOT, capture_output=True,
            )


def measure_inprocess(
    model_root: pathlib.Path, models: tuple[str, ...], sizes: list[int], seconds: float
) -> list[dict]:
    """The in-process limit per model and batch size (one subprocess per model)."""
    rows = []
    for model in models:
        out = subprocess.run(
            [sys.executable, "-m", "bench.baselines.inprocess", model,
             str(model_root / model / "1"), "--batch_sizes", ",".join(map(str, sizes)),
             "--seconds", str(seconds)],
            check=True, cwd=ROOT, capture_output=True, text=True,
        ).stdout
        rows.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))
    return rows


def machine_info() -> dict:
    import importlib.metadata as md
    import os
    import platform

    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    versions = {}
    for package in ("tensorflow", "uvicorn", "grpcio", "fastapi", "numpy", "orjson", "uvloop"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "-"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(), **versions,
    }


def server_specs(
    options: SuiteOptions, model_root: pathlib.Path, work: pathlib.Path
) -> list[servers.ServerSpec]:
    """The servers measured side by side, BentoML apart (start_servers adds it if it runs)."""
    return [
        servers.tfgate_spec(
            model_root, work, BATCHING_FILE,
            [f"--config={CONFIG_FILE}", *options.tfgate_args],
        ),
        servers.tfgate_spec(
            model_root, work, STOCK_BATCHING_FILE, [*options.tfgate_args], name="stock"
        ),
        # the tuned tfgate again on the other gRPC transport: both transports side by side
        servers.tfgate_spec(
            model_root, work, BATCHING_FILE,
            [f"--config={CONFIG_FILE}", *options.tfgate_args,
             f"--grpc_implementation={servers.grpc_transports(options.tfgate_args)[1]}"],
            name=ALT_GRPC,
        ),
        servers.fastapi_spec("naive", model_root),
        servers.fastapi_spec("constant", model_root),
    ]


def start_servers(
    options: SuiteOptions, model_root: pathlib.Path, work: pathlib.Path, results: SuiteResults
) -> dict[str, servers.RunningServer]:
    specs = server_specs(options, model_root, work)
    if options.bentoml:
        reason = servers.bentoml_available()
        if reason is None:
            specs.append(servers.bentoml_spec(model_root, work, max_batch_size=64))
            results.bentoml = servers.bentoml_version()
        else:
            results.bentoml = f"not run: {reason}"
    running: dict[str, servers.RunningServer] = {}
    try:
        for spec in specs:  # started together: TF loads overlap
            running[spec.name] = servers.RunningServer(spec, work)
        body = Workload(options.models[0]).rest_body()
        for server in running.values():
            server.wait_ready(options.models[0], body)
    except BaseException:
        for server in running.values():
            server.stop()
        raise
    return running


Level = tuple[int, Workload, int, str, str]


def plan_levels(options: SuiteOptions, names: list[str]) -> list[Level]:
    """(repeat, workload, concurrency, server, protocol), interleaving servers per level."""
    pairs = [(n, "rest") for n in names if n != ALT_GRPC]
    for name in ("tfgate", "constant"):  # the servers with a gRPC port
        if name in names:
            pairs.insert(pairs.index((name, "rest")) + 1, (name, "grpc"))
    if ALT_GRPC in names and "tfgate" in names:  # right after the main transport's gRPC
        pairs.insert(pairs.index(("tfgate", "grpc")) + 1, (ALT_GRPC, "grpc"))
    large = [("tfgate", "rest"), ("tfgate", "grpc"), (ALT_GRPC, "grpc"), ("naive", "rest"),
             ("constant", "rest"), ("constant", "grpc")]
    plan = []
    for repeat in range(options.repeats):
        for model in options.models:
            for concurrency in options.concurrencies:
                for name, protocol in pairs:
                    if _measured_at(name, concurrency):
                        plan.append((repeat, Workload(model), concurrency, name, protocol))
                if concurrency != FORMAT_CONCURRENCY:
                    continue
                for number_format in EXTRA_FORMATS:
                    for name in FORMAT_SERVERS:
                        if name in names:
                            workload = Workload(model, number_format=number_format)
                            plan.append((repeat, workload, concurrency, name, "rest"))
        for name, protocol in large:
            if name in names and LARGE.model in options.models:
                plan.append((repeat, LARGE, LARGE_CONCURRENCY, name, protocol))
    return plan


def _measured_at(name: str, concurrency: int) -> bool:
    """The stock server and the other gRPC transport only at FORMAT_CONCURRENCY; the
    constant-reply ceilings from it up
    (below it they are far from limiting anything; cut to keep the suite's time)."""
    if name in ("stock", ALT_GRPC):
        return concurrency == FORMAT_CONCURRENCY
    if name == "constant":
        return concurrency >= FORMAT_CONCURRENCY
    return True


def make_target(server: servers.RunningServer, workload: Workload, protocol: str):  # type: ignore[no-untyped-def]
    if protocol == "grpc":
        assert server.spec.grpc_port is not None
        return GrpcTarget(servers.HOST, server.spec.grpc_port, workload.grpc_request())
    return HttpTarget(
        servers.HOST, server.spec.rest_port, server.spec.path(workload.model),
        workload.rest_body(),
    )


async def run_one(
    server: servers.RunningServer, workload: Workload, concurrency: int, protocol: str,
    options: LevelOptions, progress: Progress,
) -> LevelResult:
    probe = ServerProbe(server.pid, server.spec.rest_port if server.spec.metrics else None)
    target = make_target(server, workload, protocol)
    level = dataclasses.replace(options, concurrency=concurrency)
    windows, snapshots, is_stable = await run_level(target, level, probe, progress.window)
    result = aggregate(
        windows, target=server.spec.name, workload=workload.name, protocol=protocol,
        concurrency=concurrency, request_rate=0.0, rows_per_request=workload.rows,
        is_stable=is_stable,
    )
    fill_server_side(result, delta(snapshots, min(STABILITY_WINDOWS, len(windows))))
    return result


def fill_server_side(result: LevelResult, d: dict[str, float]) -> None:
    """Per-request server figures over exactly the windows the result aggregates."""
    done = result.requests + result.error_count
    if done and d:
        result.gateway_cpu_us_per_request = d["gateway_cpu_s"] / done * 1e6
        result.server_cpu_us_per_request = d["server_cpu_s"] / done * 1e6
    if d.get("queue_count"):
        result.server_queue_us = d["queue_sum_us"] / d["queue_count"]
    if d.get("runtime_count"):
        result.server_compute_us = d["runtime_sum_us"] / d["runtime_count"]
    if d.get("batch_rows_count"):
        result.batch_size_mean = d["batch_rows_sum"] / d["batch_rows_count"]


async def sweep(
    options: SuiteOptions, running: dict[str, servers.RunningServer], results: SuiteResults,
    model_root: pathlib.Path,
) -> None:
    plan = plan_levels(options, list(running))
    progress = Progress(len(plan))
    for index, (repeat, workload, concurrency, name, protocol) in enumerate(plan):
        is_large = workload.name == LARGE.name
        previous = plan[index - 1] if index else None
        repeat_starts_large = (
            previous is None or previous[0] != repeat or previous[1].name != LARGE.name
        )
        if is_large and repeat_starts_large:
            await _measure_large_limit(options, model_root, repeat, results)
        progress.begin(f"r{repeat + 1} {workload.name} c={concurrency} {name}/{protocol}")
        result = await run_one(
            running[name], workload, concurrency, protocol, options.level, progress
        )
        result.extra["repeat"] = repeat
        results.levels.append(result)
        progress.end(
            f"{result.throughput:,.0f} req/s p99 {result.p99_us / 1e3:.1f} ms"
            f" errors {result.error_count}" + ("" if result.stable else " (unstable)")
        )
        repeat_ends = index + 1 == len(plan) or plan[index + 1][0] != repeat
        if is_large and repeat_ends:
            await _measure_large_limit(options, model_root, repeat, results)


async def _measure_large_limit(
    options: SuiteOptions, model_root: pathlib.Path, repeat: int, results: SuiteResults
) -> None:
    rows = await asyncio.to_thread(
        measure_inprocess, model_root, (LARGE.model,),
        [LARGE.rows, LARGE.rows * LARGE_CONCURRENCY], 1.0 if options.quick else 2.0,
    )
    results.inprocess_large.extend({**row, "repeat": repeat} for row in rows)


def run_suite(options: SuiteOptions) -> SuiteResults:
    started = time.monotonic()
    out = options.out_dir
    model_root, work = out / "models", out / "work"
    for directory in (out, model_root, work):
        directory.mkdir(parents=True, exist_ok=True)
    results = SuiteResults(
        machine=machine_info(), started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        command=options.command, tfgate_args=list(options.tfgate_args),
    )
    log = _say
    log("exporting models")
    export_models(model_root, (*options.models, *({"tiny"} - set(options.models))))
    log("codec micro-benchmark")
    results.codec = micro.codec_throughput(seconds=1.0 if options.quick else 3.0)
    log("4 MB IPC micro-benchmark")
    results.ipc = micro.ipc_round_trip(str(model_root / "tiny" / "1"),
                                       iterations=20 if options.quick else 60)
    log("in-process limits")
    sizes = sorted({*options.concurrencies, LARGE.rows, LARGE.rows * LARGE_CONCURRENCY})
    results.inprocess = measure_inprocess(model_root, options.models, sizes,
                                          1.0 if options.quick else 2.0)
    log("starting servers")
    running = start_servers(options, model_root, work, results)
    try:
        asyncio.run(sweep(options, running, results, model_root))
    finally:
        for server in running.values():
            server.stop()
    results.seconds = time.monotonic() - started
    write_outputs(options, results)
    return results


def write_outputs(options: SuiteOptions, results: SuiteResults) -> None:
    out = options.out_dir
    # The measurements first: whatever fails after this, `python -m bench docs` can render
    # them again from results.json.
    (out / "results.json").write_text(json.dumps(dataclasses.asdict(results), indent=1))
    table = report.medians(results.levels)
    report.write_csvs(table, out)
    report.write_raw_csv(results.levels, out / "levels_raw.csv")
    from bench import docs

    plot_dir = options.docs_path.parent / "benchmarks" if options.docs_path else out
    plots = draw_plots(results, table, options.models, plot_dir, out)
    if options.docs_path:
        options.docs_path.write_text(docs.render(results, table, plots, options.docs_path))
    _say(f"done in {results.seconds / 60:.1f} min: {out}")


def rerender_docs(out_dir: pathlib.Path, docs_path: pathlib.Path) -> None:
    """docs/benchmarks.md again from results.json (no new measurement), e.g. after
    bench/protocols.py, bench/cache_bench.py or bench/hotswap.py wrote their sections."""
    from bench import docs

    data = json.loads((out_dir / "results.json").read_text())
    levels = [LevelResult(**level) for level in data.pop("levels")]
    results = SuiteResults(levels=levels, **data)
    table = report.medians(results.levels)
    models = tuple(m for m in MODELS if any(w == m for _, _, w, _ in table))
    plots = draw_plots(results, table, models, docs_path.parent / "benchmarks", out_dir)
    docs_path.write_text(docs.render(results, table, plots, docs_path))


def draw_plots(
    results: SuiteResults,
    table: dict[report.Key, report.Median],
    models: Sequence[str],
    plot_dir: pathlib.Path,
    out_dir: pathlib.Path,
) -> dict[str, pathlib.Path]:
    """One PNG per 1-row workload into plot_dir (copied to out_dir), drawn from `table`: a
    re-render draws them again, so the plots never show another run than the tables. Without
    matplotlib (the `bench` extra) there are none, and that is said, not skipped quietly."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    for model in models:
        path = plot_dir / f"{model}.png"
        if not report.plot_workload(table, model, report.inprocess_by_size(results, model), path):
            _say("matplotlib is not installed (pip install '.[bench]'): no plots in the docs")
            return {}
        plots[model] = path
        if plot_dir != out_dir:
            (out_dir / path.name).write_bytes(path.read_bytes())
    return plots


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)
