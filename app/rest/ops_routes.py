"""tfgate's own HTTP endpoints beside TF Serving's /v1 API: liveness, readiness, metrics.

Served by the FastAPI app that rest/api.py falls back to for every path outside TF Serving's
routes; main.py builds it with the running Server so handlers read live state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from app.ops.health import server_ready

if TYPE_CHECKING:
    from app.lifecycle.registry import Registry
    from app.ops.metrics import Metrics


class Server(Protocol):
    """What these routes read of the running server (main.Server), live on every request:
    main.py builds the routes, so this module names those parts instead of importing main."""

    registry: Registry
    metrics: Metrics
    monitoring_path: str
    draining: bool


def json_response(payload: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def create_ops_app(server: Server) -> FastAPI:
    app = FastAPI(title="tfgate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the gateway process answers."""
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness: every configured model has an AVAILABLE version and we are not
        draining for shutdown."""
        models = server.core.available_versions()
        ready = server_ready(server)
        body = {
            "status": "ready" if ready else "not ready",
            "models": {name: {"available_versions": v} for name, v in models.items()},
        }
        return json_response(body, 200 if ready else 503)

    # TF Serving serves metrics only at the monitoring config's path (when its prometheus
    # export is enabled); tfgate adds its --metrics_path alias unless that is empty.
    metrics_paths = [p for p in (server.settings.metrics_path, server.monitoring_path) if p]
    for path in dict.fromkeys(metrics_paths):
        app.add_api_route(path, _metrics_endpoint(server), methods=["GET"])
    return app


def _metrics_endpoint(server: Server):  # type: ignore[no-untyped-def]
    async def metrics() -> Response:
        """Prometheus text exposition (TF Serving's metric names plus tfgate's)."""
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    return metrics
