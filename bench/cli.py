"""`tfgate bench ...`: the benchmark command line.

- `tfgate bench suite [--quick]`: everything in docs/benchmarks.md, one command.
- `tfgate bench load ...`: perf_analyzer-style sweep against any running server (REST or
  gRPC), writing perf_analyzer's CSV.
- `tfgate bench micro`: the codec and 4 MB IPC micro-benchmarks alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import shlex
import sys
import urllib.parse

from bench.loadgen import GrpcTarget, HttpTarget, LevelOptions, run_level
from bench.stats import STABILITY_WINDOWS, aggregate
from bench.workloads import NUMBER_FORMATS

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfgate bench")
    sub = parser.add_subparsers(dest="command", required=True)
    suite = sub.add_parser("suite", help="run every benchmark and write docs/benchmarks.md")
    suite.add_argument("--quick", action="store_true", help="1 repeat, c=1,64, short windows")
    suite.add_argument("--repeats", type=int)
    suite.add_argument("--concurrency", type=_ints, help="e.g. 1,16,64,256")
    suite.add_argument("--models", help="comma-separated subset of tiny,dnn,cnn")
    suite.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results")
    suite.add_argument("--docs", type=pathlib.Path, default=ROOT / "docs" / "benchmarks.md")
    suite.add_argument("--no-docs", action="store_true")
    suite.add_argument("--no-bentoml", action="store_true")
    suite.add_argument("--tfgate-arg", action="append", default=[],
                       help="extra tensorflow_model_server flag (repeatable)")
    load = sub.add_parser("load", help="sweep concurrency (or a rate) against one server")
    load.add_argument("--url", help="REST predict URL, e.g. "
                      "http://127.0.0.1:8501/v1/models/dnn:predict")
    load.add_argument("--grpc", help="host:port of a TF Serving gRPC endpoint")
    load.add_argument("--grpc-client", choices=("h2", "aio"), default="h2",
                      help="gRPC client: raw HTTP/2 (bench/grpc_h2.py) or grpc.aio")
    load.add_argument("--model", default="dnn", help="workload: tiny, dnn, cnn, image")
    load.add_argument("--rows", type=int, default=1, help="rows per request")
    load.add_argument("--format", default="6g", choices=sorted(NUMBER_FORMATS),
                      help="how the REST body prints its numbers")
    load.add_argument("--concurrency", type=_ints, default=(1, 16, 64, 256))
    load.add_argument("--rate", type=float, default=0.0, help="open loop requests/s instead")
    load.add_argument("--poisson", action="store_true")
    load.add_argument("--window", type=float, default=2.0, help="window seconds")
    load.add_argument("--warmup", type=float, default=1.0)
    load.add_argument("--max-windows", type=int, default=10)
    load.add_argument("--metrics-port", type=int, help="tfgate REST port to read /metrics from")
    load.add_argument("--pid", type=int, help="server PID, to report its CPU per request")
    load.add_argument("-f", "--csv", type=pathlib.Path, help="write perf_analyzer's CSV here")
    sub.add_parser("micro", help="codec MB/s and 4 MB IPC time")
    docs = sub.add_parser(
        "docs", help="re-render docs/benchmarks.md from the last suite's results.json and the "
        "separately measured sections (protocols, cache, hot swap, traffic split)",
    )
    docs.add_argument("--out", type=pathlib.Path, default=ROOT / "bench" / "results")
    docs.add_argument("--docs", type=pathlib.Path, default=ROOT / "docs" / "benchmarks.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "suite":
        return run_suite_command(args, argv if argv is not None else sys.argv[1:])
    if args.command == "load":
        return asyncio.run(run_load_command(args))
    if args.command == "docs":
        from bench.suite import rerender_docs

        rerender_docs(args.out, args.docs)
        return 0
    return run_micro()


def run_suite_command(args: argparse.Namespace, argv: list[str]) -> int:
    from bench.suite import SuiteOptions, quick_options, run_suite

    docs = None if args.no_docs else args.docs
    kw: dict = {"bentoml": not args.no_bentoml, "tfgate_args": tuple(args.tfgate_arg),
                "command": "tfgate bench " + shlex.join(argv)}
    options = quick_options(args.out, docs, **kw) if args.quick else SuiteOptions(
        args.out, docs, **kw)
    if args.repeats:
        options = dataclasses.replace(options, repeats=args.repeats)
    if args.concurrency:
        options = dataclasses.replace(options, concurrencies=args.concurrency)
    if args.models:
        options = dataclasses.replace(options, models=tuple(args.models.split(",")))
    run_suite(options)
    return 0


async def run_load_command(args: argparse.Namespace) -> int:
    from bench import report
    from bench.probes import ServerProbe, delta
    from bench.progress import Progress
    from bench.suite import fill_server_side
    from bench.workloads import Workload

    workload = Workload(args.model, args.rows, args.format)
    if args.grpc:
        host, port = args.grpc.rsplit(":", 1)
        target: HttpTarget | GrpcTarget = GrpcTarget(
            host, int(port), workload.grpc_request(), client=args.grpc_client
        )
    elif args.url:
        url = urllib.parse.urlsplit(args.url)
        target = HttpTarget(url.hostname or "127.0.0.1", url.port or 80, url.path,
                            workload.rest_body())
    else:
        print("tfgate bench load: give --url or --grpc", file=sys.stderr)
        return 2
    probe = ServerProbe(args.pid, args.metrics_port) if args.pid else None
    levels = [0] if args.rate else list(args.concurrency)
    progress = Progress(len(levels))
    results = []
    for concurrency in levels:
        options = LevelOptions(concurrency=concurrency or 1, request_rate=args.rate,
                               poisson=args.poisson, warmup_seconds=args.warmup,
                               window_seconds=args.window, max_windows=args.max_windows)
        progress.begin(f"c={concurrency}" if not args.rate else f"rate={args.rate}")
        windows, snapshots, ok = await run_level(target, options, probe, progress.window)
        result = aggregate(windows, target="server", workload=workload.name,
                           protocol=target.protocol, concurrency=concurrency,
                           request_rate=args.rate, rows_per_request=args.rows, is_stable=ok)
        fill_server_side(result, delta(snapshots, min(STABILITY_WINDOWS, len(windows))))
        results.append(result)
        progress.end(f"{result.throughput:,.0f} req/s p50 {result.p50_us / 1e3:.2f} ms "
                     f"p99 {result.p99_us / 1e3:.2f} ms errors {result.errors or 0}")
    table = report.medians(results)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        for path in report.write_csvs(table, args.csv.parent):
            path.replace(args.csv)
    for m in sorted(table.values(), key=lambda m: m.throughput):
        print(",".join(report.perf_analyzer_row(m)))
    return 0


def run_micro() -> int:
    import json
    import tempfile

    from bench import micro
    from bench.suite import export_models

    print(json.dumps({"codec": micro.codec_throughput()}, indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        export_models(pathlib.Path(tmp), ("tiny",))
        print(json.dumps({"ipc": micro.ipc_round_trip(f"{tmp}/tiny/1")}, indent=1))
    return 0
