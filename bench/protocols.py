"""REST vs gRPC on the same tfgate server: dnn and a 224x224x3 float image model, at
concurrency 1 and 64 (JSON's cost is what TF Serving users complain about).

    .venv/bin/python -m bench.protocols [--repeats 3] [--out bench/results]

One tfgate server (batching on, bench/batching_parameters.pbtxt) serves both models; for
each model and concurrency the REST body ({"instances": [...]}) and the gRPC PredictRequest
(tensor_content) carry identical values, and the two protocols are measured back to back in
each repeat. Writes bench/results/protocols.json and bench/protocols_section.md, which
bench/docs.py includes in docs/benchmarks.md. Traffic goes to 127.0.0.1 only; the server
is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from bench.loadgen import GrpcTarget, HttpTarget, LevelOptions, run_level
from bench.servers import RunningServer, tfgate_spec
from bench.stats import Window, percentile_ns
from bench.workloads import Workload

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTION = pathlib.Path(__file__).resolve().parent / "protocols_section.md"
MODELS = ("dnn", "image")
CONCURRENCY = (1, 64)


def start_server(model_root: pathlib.Path, work: pathlib.Path) -> RunningServer:
    """tfgate serving every model exported under model_root (MODELS), batching as in the suite."""
    spec = tfgate_spec(model_root, work, ROOT / "bench" / "batching_parameters.pbtxt", [])
    return RunningServer(spec, work)


def summarize(windows: list[Window]) -> dict[str, float]:
    latencies = [v for w in windows for v in w.latencies_ns]
    seconds = sum(w.seconds for w in windows)
    errors = sum(sum(w.errors.values()) for w in windows)
    return {
        "throughput": len(latencies) / seconds if seconds else 0.0,
        "p50_ms": percentile_ns(latencies, 50) / 1e6,
        "p99_ms": percentile_ns(latencies, 99) / 1e6,
        "errors": errors,
    }


async def measure(server: RunningServer, repeats: int) -> list[dict[str, object]]:
    options = LevelOptions(warmup_seconds=1.0, window_seconds=2.0, min_windows=3, max_windows=6)
    rows: list[dict[str, object]] = []
    for model in MODELS:
        workload = Workload(model)
        rest = HttpTarget(
            "127.0.0.1", server.spec.rest_port, server.spec.path(model), workload.rest_body()
        )
        grpc_target = GrpcTarget("127.0.0.1", server.spec.grpc_port or 0, workload.grpc_request())
        for concurrency in CONCURRENCY:
            level = LevelOptions(**{**options.__dict__, "concurrency": concurrency})
            for repeat in range(repeats):
                for protocol, target in (("rest", rest), ("grpc", grpc_target)):
                    windows, _, stable = await run_level(target, level)
                    rows.append(
                        {
                            "model": model,
                            "concurrency": concurrency,
                            "repeat": repeat,
                            "protocol": protocol,
                            "stable": stable,
                            **summarize(windows),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def median(rows: list[dict[str, object]], model: str, c: int, protocol: str, field: str) -> float:
    return statistics.median(
        float(r[field])
        for r in rows  # type: ignore[arg-type]
        if r["model"] == model and r["concurrency"] == c and r["protocol"] == protocol
    )


def ratio(rows: list[dict[str, object]], model: str, c: int) -> float:
    """Median over repeats of gRPC/REST throughput measured back to back."""
    per_repeat = []
    for repeat in {int(r["repeat"]) for r in rows}:  # type: ignore[arg-type]
        pair = {
            r["protocol"]: float(r["throughput"])
            for r in rows  # type: ignore[arg-type]
            if r["model"] == model and r["concurrency"] == c and r["repeat"] == repeat
        }
        if pair.get("rest"):
            per_repeat.append(pair["grpc"] / pair["rest"])
    return statistics.median(per_repeat)


def render(rows: list[dict[str, object]], repeats: int) -> str:
    lines = [
        "## REST vs gRPC (same server): dnn and a 224x224x3 image model",
        "",
        f"Command: `.venv/bin/python -m bench.protocols --repeats {repeats}`; one tfgate server",
        'with batching on; REST sends `{"instances": ...}` JSON, gRPC a PredictRequest with',
        "`tensor_content`; both measured back to back in every repeat; medians of "
        f"{repeats} repeats.",
        "",
        "| model | c | REST req/s | gRPC req/s | gRPC / REST | p50 ms REST / gRPC | p99 ms REST / gRPC | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for c in CONCURRENCY:

            def m(protocol: str, field: str, model: str = model, c: int = c) -> float:
                return median(rows, model, c, protocol, field)

            errors = sum(
                int(r["errors"])
                for r in rows  # type: ignore[arg-type]
                if r["model"] == model and r["concurrency"] == c
            )
            lines.append(
                f"| {model} | {c} | {m('rest', 'throughput'):,.0f} | {m('grpc', 'throughput'):,.0f} "
                f"| {ratio(rows, model, c):.2f}x | {m('rest', 'p50_ms'):.1f} / {m('grpc', 'p50_ms'):.1f} "
                f"| {m('rest', 'p99_ms'):.1f} / {m('grpc', 'p99_ms'):.1f} | {errors} |"
            )
    image64 = ratio(rows, "image", 64)
    verdict = "met" if image64 >= 2.0 else "**missed**"
    lines += [
        "",
        f"Target (issue 4): gRPC throughput on the image model at least 2x REST's: "
        f"{image64:.2f}x at c=64 ({verdict}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tfgate-protocols-") as tmp:
        work = pathlib.Path(tmp)
        for model in MODELS:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "workers.example_models",
                    model,
                    str(work / "models" / model),
                ],
                check=True,
                cwd=ROOT,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                stdout=subprocess.DEVNULL,
            )
        server = start_server(work / "models", work)
        try:
            for model in MODELS:
                server.wait_ready(model, Workload(model).rest_body())
            rows = asyncio.run(measure(server, args.repeats))
        finally:
            server.stop()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocols.json").write_text(json.dumps(rows, indent=1))
    SECTION.write_text(render(rows, args.repeats))
    print(SECTION.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
