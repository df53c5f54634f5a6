"""Server readiness, one rule for every endpoint that reports it: /readyz (rest/ops_routes.py),
V2's GET /v2/health/ready (rest/v2_routes.py) and gRPC ServerReady (rpc/v2_service.py)."""

from __future__ import annotations

from typing import Protocol


class ModelStates(Protocol):
    def available_versions(self) -> dict[str, list[int]]: ...


class ReadinessSource(Protocol):
    """What readiness reads of the running server (main.Server): ServerCore and draining."""

    @property
    def core(self) -> ModelStates: ...

    @property
    def draining(self) -> bool: ...


def server_ready(server: ReadinessSource) -> bool:
    """Every configured model has an AVAILABLE version (as the version state events reported
    them, ServerCore's monitor) and the server is not draining for shutdown."""
    models = server.core.available_versions()
    return not server.draining and bool(models) and all(models.values())
