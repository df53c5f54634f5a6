"""V2 (Open Inference Protocol) beside TF Serving's API on one tfgate server: TF Serving REST
predict, V2 REST JSON infer, V2 REST binary-data infer, TF Serving gRPC Predict and V2 gRPC
ModelInfer (raw_input_contents), side by side, on dnn (1 row, c=64) and the 224x224x3 image
model (1 row, low concurrency: the large-tensor case).

    .venv/bin/python -m bench.v2_protocol [--repeats 2] [--out bench/results]

One tfgate server (batching on, bench/batching_parameters.pbtxt) serves both models. Every
request carries the same float32 values (bench/workloads.py's arrays); the five targets are
measured back to back in each repeat with the raw asyncio load generator (bench/loadgen.py).
Writes bench/results/v2_protocol.json and bench/v2_protocol_section.md, which bench/docs.py
includes in docs/benchmarks.md. Traffic goes to 127.0.0.1 only; the server is stopped at the end.
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

import numpy as np

from bench.loadgen import GrpcTarget, HttpTarget, LevelOptions, Target, run_level
from bench.protocols import start_server, summarize
from bench.workloads import Workload
from proto import open_inference_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTION = pathlib.Path(__file__).resolve().parent / "v2_protocol_section.md"
# (model, concurrency): the small request at high concurrency, the large tensor at low.
CASES = (("dnn", 64), ("image", 4))
V2_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
TARGETS = ("tf_rest", "v2_rest_json", "v2_rest_binary", "tf_grpc", "v2_grpc")
LABELS = {
    "tf_rest": "TF Serving REST",
    "v2_rest_json": "V2 REST JSON",
    "v2_rest_binary": "V2 REST binary",
    "tf_grpc": "TF Serving gRPC",
    "v2_grpc": "V2 gRPC",
}


def v2_json_body(array: np.ndarray) -> bytes:
    """Flat row-major data with 6 significant digits, as the TF Serving body prints them."""
    data = ",".join(f"{v:.6g}" for v in array.reshape(-1).tolist())
    shape = ",".join(str(d) for d in array.shape)
    return (
        '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [' + shape + '], "data": ['
        + data + "]}]}"
    ).encode()


def v2_binary_body(array: np.ndarray) -> tuple[bytes, int]:
    """Triton's binary tensor data: a JSON header, then the raw little-endian floats; the
    outputs are asked for as binary too."""
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + raw, len(header)


def v2_grpc_request(model: str, array: np.ndarray) -> bytes:
    request = open_inference_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(array.shape))
    request.raw_input_contents.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return request.SerializeToString()


def targets(rest_port: int, grpc_port: int, model: str) -> dict[str, Target]:
    workload = Workload(model)
    array = workload.array()
    v2_path = f"/v2/models/{model}/infer"
    binary_body, header_length = v2_binary_body(array)
    return {
        "tf_rest": HttpTarget("127.0.0.1", rest_port, f"/v1/models/{model}:predict",
                              workload.rest_body()),
        "v2_rest_json": HttpTarget("127.0.0.1", rest_port, v2_path, v2_json_body(array)),
        "v2_rest_binary": HttpTarget(
            "127.0.0.1",
            rest_port,
            v2_path,
            binary_body,
            content_type="application/octet-stream",
            headers=(("Inference-Header-Content-Length", str(header_length)),),
        ),
        "tf_grpc": GrpcTarget("127.0.0.1", grpc_port, workload.grpc_request()),
        "v2_grpc": GrpcTarget(
            "127.0.0.1", grpc_port, v2_grpc_request(model, array), method=V2_INFER_METHOD
        ),
    }


async def measure(rest_port: int, grpc_port: int, repeats: int) -> list[dict[str, object]]:
    options = LevelOptions(warmup_seconds=1.0, window_seconds=2.0, min_windows=3, max_windows=4)
    rows: list[dict[str, object]] = []
    for model, concurrency in CASES:
        by_name = targets(rest_port, grpc_port, model)
        level = LevelOptions(**{**options.__dict__, "concurrency": concurrency})
        for repeat in range(repeats):
            for name in TARGETS:
                windows, _, stable = await run_level(by_name[name], level)
                rows.append(
                    {
                        "model": model,
                        "concurrency": concurrency,
                        "repeat": repeat,
                        "target": name,
                        "stable": stable,
                        **summarize(windows),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _median(rows: list[dict[str, object]], model: str, target: str, field: str) -> float:
    return statistics.median(
        float(r[field]) for r in rows  # type: ignore[arg-type]
        if r["model"] == model and r["target"] == target
    )


def _ratio(rows: list[dict[str, object]], model: str, target: str, base: str) -> float:
    """Median over repeats of target/base throughput measured back to back."""
    per_repeat = []
    for repeat in sorted({int(r["repeat"]) for r in rows}):  # type: ignore[arg-type]
        pair = {
            r["target"]: float(r["throughput"])  # type: ignore[arg-type]
            for r in rows
            if r["model"] == model and r["repeat"] == repeat
        }
        if pair.get(base):
            per_repeat.append(pair[target] / pair[base])
    return statistics.median(per_repeat) if per_repeat else 0.0


def render(rows: list[dict[str, object]], repeats: int) -> str:
    lines = [
        "## V2 (Open Inference Protocol) beside TF Serving's API (same server, same model)",
        "",
        f"Command: `.venv/bin/python -m bench.v2_protocol --repeats {repeats}`; one tfgate",
        "server with batching on; the same float32 values in every request: TF Serving REST",
        '`{"instances": ...}`, V2 REST JSON `data`, V2 REST binary tensor data (raw floats after',
        "the JSON header, binary outputs), TF Serving gRPC `tensor_content`, V2 gRPC",
        "`raw_input_contents`; the five measured back to back in every repeat; medians of "
        f"{repeats}",
        "repeats. The ratio compares V2 with TF Serving's API on the same transport (REST with "
        "REST,",
        "gRPC with gRPC), per repeat.",
        "",
        "| model (c) | API | req/s | vs TF Serving's API | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, concurrency in CASES:
        for name in TARGETS:
            base = "tf_grpc" if "grpc" in name else "tf_rest"
            errors = sum(
                int(r["errors"]) for r in rows  # type: ignore[arg-type]
                if r["model"] == model and r["target"] == name
            )
            vs = "1.00x" if name == base else f"{_ratio(rows, model, name, base):.2f}x"
            lines.append(
                f"| {model} ({concurrency}) | {LABELS[name]} "
                f"| {_median(rows, model, name, 'throughput'):,.0f} | {vs} "
                f"| {_median(rows, model, name, 'p50_ms'):.1f} "
                f"| {_median(rows, model, name, 'p99_ms'):.1f} | {errors} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.v2_protocol", description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tfgate-v2-") as tmp:
        work = pathlib.Path(tmp)
        for model, _ in CASES:
            subprocess.run(
                [sys.executable, "-m", "workers.example_models", model,
                 str(work / "models" / model)],
                check=True,
                cwd=ROOT,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                stdout=subprocess.DEVNULL,
            )
        server = start_server(work / "models", work)
        try:
            for model, _ in CASES:
                server.wait_ready(model, Workload(model).rest_body())
            rows = asyncio.run(
                measure(server.spec.rest_port, server.spec.grpc_port or 0, args.repeats)
            )
        finally:
            server.stop()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "v2_protocol.json").write_text(json.dumps(rows, indent=1))
    SECTION.write_text(render(rows, args.repeats))
    print(SECTION.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
