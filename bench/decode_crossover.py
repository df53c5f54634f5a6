"""Where the simdjson lane beats orjson: both REST decode paths timed over shapes x number formats.

Data path position: micro-benchmark of codec.parse_predict_json() + decode_predict_inputs(), no
HTTP. For each shape and NUMBER_FORMATS entry it times the orjson path (json_read + codec/tensor)
and the dense path (json_dense, simdjson -> numpy) on the same body, and prints a markdown table
with what app/codec/json_dense.worth_dense() chooses for it (bench/analysis.md keeps the table).
Run: `python -m bench.decode_crossover [--seconds S]`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from app.codec import json_dense
from app.codec import tensor_json as codec
from app.codec.json_read import load_json_object
from app.core.types import DT_FLOAT, SignatureSpec, TensorSpec
from bench.workloads import NUMBER_FORMATS, rest_body

SHAPES: tuple[tuple[int, ...], ...] = (
    (1, 4), (1, 16), (1, 64), (1, 128), (1, 256), (4, 256), (8, 256), (64, 256),
    (1, 8, 8, 1), (1, 16, 16, 1), (1, 28, 28, 1), (1, 32, 32, 3), (1, 224, 224, 3),
)  # fmt: skip
_SIGNATURE = SignatureSpec(
    "serving_default", "tensorflow/serving/predict",
    {"x": TensorSpec("x", "x:0", DT_FLOAT, None)}, {},
)  # fmt: skip


def _best_us(fn: object, seconds: float) -> float:
    """Best per-call time of 5 timed batches (the least disturbed by other processes)."""
    assert callable(fn)
    fn()
    calls, started = 1, time.perf_counter()
    while time.perf_counter() - started < seconds / 10:
        fn()
        calls += 1
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def measure(shape: tuple[int, ...], number_format: str, seconds: float) -> dict:
    array = np.random.default_rng(7).random(shape, dtype=np.float32)
    body = rest_body(array, number_format)

    def orjson_path() -> object:
        parsed = codec.PredictJson("", "row", load_json_object(body), body)
        return codec.decode_predict_inputs(parsed, _SIGNATURE)

    def dense_path() -> object:
        dense = json_dense.read_dense_body(body)
        assert dense is not None
        parsed = codec.PredictJson("", "row", None, body, dense=dense)
        return codec.decode_predict_inputs(parsed, _SIGNATURE)

    def choose() -> object:
        return json_dense.worth_dense(body)

    orjson_us, dense_us = _best_us(orjson_path, seconds), _best_us(dense_path, seconds)
    return {
        "shape": "x".join(map(str, shape)), "format": number_format, "bytes": len(body),
        "numbers": array.size, "lists": body.count(b"["), "orjson_us": orjson_us,
        "dense_us": dense_us, "choose_us": _best_us(choose, seconds / 4),
        "chosen": "dense" if json_dense.worth_dense(body) else "orjson",
    }  # fmt: skip


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| shape | numbers | format | body bytes | orjson path us | simdjson path us "
        "| orjson / simdjson | rule picks | pick's loss | rule us |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        best = min(r["orjson_us"], r["dense_us"])
        picked = r["dense_us"] if r["chosen"] == "dense" else r["orjson_us"]
        lines.append(
            f"| {r['shape']} | {r['numbers']} | {r['format']} | {r['bytes']:,} "
            f"| {r['orjson_us']:.1f} | {r['dense_us']:.1f} | {r['orjson_us'] / r['dense_us']:.2f} "
            f"| {r['chosen']} | {picked / best - 1:.0%} | {r['choose_us']:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_crossover")
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per path and cell")
    parser.add_argument("--formats", default=",".join(NUMBER_FORMATS))
    args = parser.parse_args(argv)
    rows = [
        measure(shape, fmt, args.seconds)
        for shape in SHAPES
        for fmt in args.formats.split(",")
    ]
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
