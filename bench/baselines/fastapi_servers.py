"""Baselines (a) and (c): the naive server and the constant-reply ceilings.

- naive: FastAPI + one model call per request, in one process with TensorFlow, written the
  way the TF2 docs and most tutorials do it (tf.saved_model.load(...).signatures, Request.json,
  JSONResponse). It answers TF Serving's predict route so the load generator sends the same
  bytes to every server.
- constant: the same route returning a fixed body after reading the request body: what
  uvicorn + FastAPI on this machine can do at all (the HTTP ceiling). With --grpc_port the
  same process also answers PredictionService/Predict over grpc.aio with a fixed
  PredictResponse, taking the request as raw bytes (no parse): what grpc.aio on this
  machine can do at all (the gRPC ceiling), on the same event loop as tfgate's gRPC server.
Both run under uvicorn with httptools and uvloop, as tfgate's REST server does, bound to
127.0.0.1. Started by bench/servers.py as `python -m bench.baselines.fastapi_servers`.
"""

from __future__ import annotations

import argparse
import os

import grpc
import uvicorn
import uvloop
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

CONSTANT_BODY = b'{"predictions": [[2.5]]}'
PREDICT_SERVICE = "tensorflow.serving.PredictionService"


def naive_app(model_root: str) -> FastAPI:
    import numpy as np
    import tensorflow as tf

    app = FastAPI()
    signatures = {}
    for name in sorted(os.listdir(model_root)):
        path = os.path.join(model_root, name, "1")
        if os.path.isdir(path):
            signatures[name] = tf.saved_model.load(path).signatures["serving_default"]

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> JSONResponse:
        body = await request.json()
        x = np.asarray(body["instances"], dtype=np.float32)
        outputs = signatures[name](x=tf.constant(x))
        y = next(iter(outputs.values())).numpy()
        return JSONResponse({"predictions": y.tolist()})

    return app


def constant_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> Response:
        await request.body()
        return Response(CONSTANT_BODY, media_type="application/json")

    return app


def constant_predict_response() -> bytes:
    """The gRPC ceiling's reply: a PredictResponse holding one float, as CONSTANT_BODY."""
    from app.core.protos import predict_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)] * 2
    )
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "constant"
    response.outputs["y"].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[2.5])
    )
    return response.SerializeToString()


def constant_grpc_server(port: int) -> grpc.aio.Server:
    """grpc.aio with TF Serving's message limits and no (de)serializers: the request stays
    bytes, as the HTTP ceiling reads the body without parsing it."""
    reply = constant_predict_response()

    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    server = grpc.aio.server(options=[
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1),
    ])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        PREDICT_SERVICE, {"Predict": grpc.unary_unary_rpc_method_handler(predict)},
    )])
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot bind 127.0.0.1:{port}")
    return server


async def serve(app: FastAPI, port: int, grpc_port: int | None) -> None:
    """uvicorn, and the gRPC ceiling beside it on the same loop. On SIGTERM uvicorn shuts
    down and re-raises the signal, so the process (and the gRPC server with it) ends there;
    the benchmark's load has stopped by then."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http="httptools", loop="uvloop",
        access_log=False, log_level="warning", backlog=4096,
    )
    if grpc_port:
        grpc_server = constant_grpc_server(grpc_port)
        await grpc_server.start()
    await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.fastapi_servers")
    parser.add_argument("mode", choices=("naive", "constant"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc_port", type=int, default=0, help="constant mode only")
    parser.add_argument("--model_root", default="")
    args = parser.parse_args()
    if args.grpc_port and args.mode != "constant":
        parser.error("--grpc_port is for the constant mode")
    app = naive_app(args.model_root) if args.mode == "naive" else constant_app()
    uvloop.run(serve(app, args.port, args.grpc_port or None))  # as tfgate's gateway runs


if __name__ == "__main__":
    main()
