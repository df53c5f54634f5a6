"""app/rpc/server.py on grpc.aio: every service is served through generic handlers, none as
registered methods (each registered method is one more pending future that grpc.aio's accept
loop waits on for every call it accepts, Predict included). Runs a real grpc.aio server on
127.0.0.1 with the server's own start path; no model, no worker."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.admin.tokens import AdminTokens
from app.rpc import server as rpc_server
from app.serving.auth import InferenceAuth
from app.settings.settings import load_settings

# flag validation wants a model source; nothing here loads it
MODEL = ["--model_name=m", "--model_base_path=/nonexistent"]


class RecordingServer:
    """What add_*_to_server functions call, recorded."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
        self.registered.append(service_name)


def _details(method: str) -> Any:
    return types.SimpleNamespace(method=method, invocation_metadata=())


def _gateway(settings: Any) -> Any:
    """The parts of main.Server that the gRPC server's registration reads."""
    return types.SimpleNamespace(
        settings=settings,
        service=None,
        inference_auth=InferenceAuth.disabled(),
        metrics=types.SimpleNamespace(counter_total=lambda _name: 0),
        admin=None,
        admin_tokens=AdminTokens([]),
        core=types.SimpleNamespace(reload_model_config=None),
    )


def test_every_service_is_generic_and_still_resolves() -> None:
    settings = load_settings([*MODEL, "--port=1", "--enable_grpc_healthcheck_service"])
    recorder = RecordingServer()
    target = rpc_server.GenericHandlersOnly(recorder)
    names = rpc_server._add_servicers(_gateway(settings), target)
    rpc_server._add_health_and_reflection(settings, target, names)
    assert recorder.registered == []
    for method in (
        "/tensorflow.serving.PredictionService/Predict",
        "/tensorflow.serving.ModelService/GetModelStatus",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        f"/{rpc_server.ADMIN_SERVICE}/ListModels",
    ):
        handlers = [h.service(_details(method)) for h in recorder.generic]
        assert any(h is not None for h in handlers), method


async def test_grpcio_server_waits_on_the_generic_request_only() -> None:
    settings = load_settings([
        *MODEL, "--port=1", "--grpc_implementation=grpcio", "--enable_grpc_healthcheck_service",
    ])
    grpc_server = await rpc_server._start_grpcio(_gateway(settings), [])  # nothing bound
    try:
        await asyncio.sleep(0.1)
        waiting = [
            t.get_coro().__qualname__ for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "").startswith("AioServer._request")
        ]
        # one pending request for generic calls; none per registered method
        assert waiting == ["AioServer._request_call"], waiting
    finally:
        await grpc_server.stop(0)


@pytest.mark.parametrize("service", ["", "PredictionService"])
async def test_health_answers_through_the_generic_handler(service: str) -> None:
    settings = load_settings([*MODEL, "--port=1", "--enable_grpc_healthcheck_service"])
    grpc_server = grpc.aio.server()
    health = rpc_server._add_health_and_reflection(
        settings, rpc_server.GenericHandlersOnly(grpc_server), []
    )
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        await rpc_server._mark_serving(health)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await grpc_server.stop(0)
