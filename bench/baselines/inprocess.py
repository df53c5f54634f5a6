"""Baseline (b): the in-process batched limit.

The model called directly, in one process, at a fixed batch size, through the same Session
callable the tfgate worker uses (workers.runner) and the session setting tfgate's workers
get by default (TF's idle threads sleep instead of spinning; --thread_spinning for TF's
own default, which is slower here): no HTTP, no JSON, no IPC. Prints one JSON
line per batch size: {"model", "batch_size", "rows_per_second", "ms_per_call"}.
Run by bench/suite.py as `python -m bench.baselines.inprocess MODEL_DIR --batch_sizes 1,64`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from tensorflow.core.protobuf import config_pb2

from workers.runner import SavedModelRunner

INPUT_SHAPES = {"tiny": (1,), "dnn": (256,), "cnn": (28, 28, 1), "image": (224, 224, 3)}


def rows_per_second(runner: SavedModelRunner, x: np.ndarray, seconds: float) -> tuple[float, int]:
    for _ in range(5):  # warm-up: first calls build the callable and touch the weights
        runner.run("serving_default", {"x": x}, [])
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        runner.run("serving_default", {"x": x}, [])
        calls += 1
    elapsed = time.perf_counter() - started
    return calls * x.shape[0] / elapsed, calls


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.inprocess")
    parser.add_argument("model", choices=sorted(INPUT_SHAPES))
    parser.add_argument("version_dir")
    parser.add_argument("--batch_sizes", default="1,16,64,256")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--thread_spinning", action="store_true",
                        help="TF's default; tfgate's --tensorflow_thread_spinning")
    args = parser.parse_args()
    config = config_pb2.ConfigProto()
    config.experimental.disable_thread_spinning = not args.thread_spinning
    runner = SavedModelRunner(args.version_dir, session_config=config)
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.batch_sizes.split(",")):
        x = rng.random((size, *INPUT_SHAPES[args.model]), dtype=np.float32)
        rate, calls = rows_per_second(runner, x, args.seconds)
        print(json.dumps({
            "model": args.model, "batch_size": size, "rows_per_second": rate,
            "ms_per_call": 1e3 * size / rate, "calls": calls,
        }), flush=True)
    runner.close()


if __name__ == "__main__":
    main()
