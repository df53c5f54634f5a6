"""Micro-benchmarks of two hot-path pieces, without HTTP: the REST codec and the shm IPC.

- codec: MB/s of TF Serving JSON decoded into float32 tensors (app.codec.tensor_json) and float32
  tensors encoded back to JSON, on one core, beside the orjson -> lists -> ndarray path.
- ipc: gateway -> worker -> gateway time of a 4 MB float32 tensor through a real WorkerPool
  (workers/ipc.py slabs + the control pipe): round trip minus the model's own run time.
Both return plain dicts that bench/suite.py stores and reports.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import numpy as np
import orjson

from app.codec import predict_response
from app.codec import tensor_json as codec
from app.core.types import ServableId, SignatureSpec, TensorSpec

DT_FLOAT = 1


def _best_rate(fn: Callable[[], object], nbytes: int, seconds: float) -> float:
    """MB/s of fn over nbytes, median of 5 timed batches (noise-resistant on 2 cores)."""
    fn()
    calls = 1
    started = time.perf_counter()
    while time.perf_counter() - started < seconds / 10:
        fn()
        calls += 1
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls * nbytes / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def codec_throughput(rows: int = 64, width: int = 256, seconds: float = 2.0) -> dict[str, float]:
    """JSON <-> float32 MB/s (of JSON text) through app.codec.tensor_json, and the list-based reference."""
    from bench.workloads import rest_body

    array = np.random.default_rng(1).random((rows, width), dtype=np.float32)
    body = rest_body(array)
    signature = SignatureSpec(
        "serving_default",
        "tensorflow/serving/predict",
        {"x": TensorSpec("x", "x:0", DT_FLOAT, (-1, width))},
        {"y": TensorSpec("y", "y:0", DT_FLOAT, (-1, width))},
    )

    def decode() -> object:
        return codec.decode_predict_inputs(codec.parse_predict_json(body), signature)

    encoded = predict_response.encode_predict_response({"y": array}, "row")

    def encode() -> object:
        return predict_response.encode_predict_response({"y": array}, "row")

    def decode_lists() -> object:
        return np.asarray(orjson.loads(body)["instances"], dtype=np.float32)

    def encode_lists() -> object:
        return orjson.dumps({"predictions": array.tolist()})

    return {
        "json_bytes": float(len(body)),
        "decode_mb_s": _best_rate(decode, len(body), seconds),
        "encode_mb_s": _best_rate(encode, len(encoded), seconds),
        "decode_orjson_lists_mb_s": _best_rate(decode_lists, len(body), seconds),
        "encode_orjson_lists_mb_s": _best_rate(encode_lists, len(encoded), seconds),
    }


async def _ipc(model_dir: str, nbytes: int, iterations: int) -> dict[str, float]:
    from app.runtime.pool import LoadSpec, WorkerPool
    from app.runtime.worker import PoolOptions

    pool = WorkerPool(
        PoolOptions(num_workers=1, arena_bytes=max(64 << 20, 4 * nbytes), log_level="WARNING")
    )
    await pool.start()
    try:
        servable = ServableId("tiny", 1)
        await pool.load(servable, LoadSpec(model_dir, ("serve",), False, 0))
        x = np.random.default_rng(2).random((nbytes // 4, 1), dtype=np.float32)
        totals, runs = [], []
        for i in range(iterations + 5):
            t0 = time.perf_counter()
            outcome = await pool.run(servable, "serving_default", [{"x": x}], [])
            elapsed = time.perf_counter() - t0
            if i >= 5:  # the first calls build the Session callable
                totals.append(elapsed)
                runs.append(outcome.run_seconds)
        ipc = [t - r for t, r in zip(totals, runs, strict=True)]
        return {
            "tensor_bytes": float(nbytes),
            "round_trip_ms_median": statistics.median(totals) * 1e3,
            "model_run_ms_median": statistics.median(runs) * 1e3,
            "ipc_ms_median": statistics.median(ipc) * 1e3,
            "ipc_ms_p90": float(np.percentile(ipc, 90)) * 1e3,
        }
    finally:
        await pool.close()


def ipc_round_trip(model_dir: str, nbytes: int = 4 << 20, iterations: int = 50) -> dict[str, float]:
    """4 MB in and 4 MB out through the `tiny` model (y = 0.5x + 2 on 1M rows)."""
    return asyncio.run(_ipc(model_dir, nbytes, iterations))
