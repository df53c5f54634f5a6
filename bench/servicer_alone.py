"""tfgate's gRPC Predict path without the gRPC transport: `python -m bench.servicer_alone`.

Data path position: the large-requests analysis. The suite measures tfgate over gRPC and the
grpc.aio ceiling (constant reply, no model) separately; this script measures the third
part, everything tfgate does between grpc.aio and the worker, by calling the same
PredictionServicer.Predict from N tasks in one process: request bytes -> PredictRequest ->
decode -> ServingService -> batcher -> shared memory -> worker -> reply -> serialized
PredictResponse. No socket, no HTTP/2, no load generator process.

It builds the server from the same flags as tensorflow_model_server (app.main.build_server),
so batching and the worker are the ones the suite runs. Prints one JSON line per stage:
`pool` (WorkerPool.run per request, no batcher), `service` (ServingService.predict with
the batcher), `servicer` (the whole gRPC servicer on raw request bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable

import numpy as np
import uvloop

from app.core.protos import predict_pb2
from app.core.types import ModelSpec
from app.main import build_server, tune_garbage_collector, wait_for_initial_models
from app.rpc.services import PredictionServicer
from app.serving.service import Entrypoint
from app.settings.settings import load_settings
from bench.probes import cpu_seconds, tree_cpu_seconds
from bench.workloads import INPUT_SHAPES, grpc_request

STAGES = ("pool", "service", "servicer")


class CallFailed(RuntimeError):
    """A call ended in a gRPC status: the measurement is void."""


class NoDeadlineContext:
    """What the servicer reads from grpc.aio's context: no deadline, no metadata; abort()
    raises, so an error status stops the measurement instead of counting as a call."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: object, details: str) -> None:
        raise CallFailed(f"{code}: {details}")


async def measure(
    call: Callable[[], Awaitable[object]], concurrency: int, warmup_seconds: float,
    seconds: float,
) -> tuple[float, float, float]:
    """(calls/s, gateway CPU us/call, worker CPU us/call) with `concurrency` tasks calling
    back to back; the gateway is this process, the workers its children."""
    done = 0
    running = True

    async def caller() -> None:
        nonlocal done
        while running:
            await call()
            done += 1

    tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup_seconds)
        pid = os.getpid()
        done, cpu0, tree0, t0 = 0, cpu_seconds(pid), tree_cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(seconds)
        calls, elapsed = done, time.perf_counter() - t0
        gateway_s, tree_s = cpu_seconds(pid) - cpu0, tree_cpu_seconds(pid) - tree0
    finally:
        running = False
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:  # a failed call ends its task: report it, never a rate
        if isinstance(outcome, BaseException):
            raise outcome
    if calls == 0:
        raise CallFailed(f"no call finished in {seconds} s")
    return calls / elapsed, gateway_s / calls * 1e6, (tree_s - gateway_s) / calls * 1e6


async def run(args: argparse.Namespace, flags: list[str]) -> None:
    settings = load_settings(flags)
    server = await build_server(settings)
    await server.pool.start()
    server.batcher.start()
    try:
        server.discovery.scan()
        await wait_for_initial_models(server)
        tune_garbage_collector()  # as app.main.run does once the models are up
        x = np.random.default_rng(0).random((args.rows, *INPUT_SHAPES[args.model]), np.float32)
        raw = grpc_request(args.model, x)
        spec = ModelSpec(args.model, None, None, "")
        servable, _ = server.registry.resolve(spec)
        servicer = PredictionServicer(  # as app.rpc.server.start builds it
            server.service,
            use_tensor_content=settings.enable_serialization_as_tensor_content,
            auth=server.inference_auth,
        )
        context = NoDeadlineContext()

        async def pool() -> object:
            return await server.pool.run(servable, "serving_default", [{"x": x}], [])

        async def service() -> object:
            return await server.service.predict(
                spec, lambda _signature: {"x": x}, deadline=None, entrypoint=Entrypoint.GRPC
            )

        async def grpc_servicer() -> object:
            request = predict_pb2.PredictRequest.FromString(raw)
            response = await servicer.Predict(request, context)  # type: ignore[arg-type]
            return response.SerializeToString()

        calls = {"pool": pool, "service": service, "servicer": grpc_servicer}
        for stage in args.stages.split(","):
            rate, gateway_us, worker_us = await measure(
                calls[stage], args.concurrency, args.warmup_seconds, args.seconds
            )
            print(json.dumps({
                "stage": stage, "model": args.model, "rows": args.rows,
                "concurrency": args.concurrency, "calls_per_second": round(rate, 1),
                "rows_per_second": round(rate * args.rows), "gateway_cpu_us_per_call":
                round(gateway_us), "worker_cpu_us_per_call": round(worker_us),
            }), flush=True)
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.servicer_alone",
        description="Unknown arguments are tensorflow_model_server flags (e.g. "
        "--model_config_file, --enable_batching, --batching_parameters_file, --config).",
    )
    parser.add_argument("--model", default="dnn", choices=sorted(INPUT_SHAPES))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup_seconds", type=float, default=2.0)
    parser.add_argument("--stages", default=",".join(STAGES))
    args, flags = parser.parse_known_args()
    if not any(f.startswith(("--port", "--grpc_socket_path")) for f in flags):
        flags.append("--port=1")  # required by flag validation; nothing listens here
    uvloop.run(run(args, flags))


if __name__ == "__main__":
    main()
