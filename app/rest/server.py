"""HTTP servers of the gateway: the REST port (TF Serving's API + tfgate's endpoints) and,
when configured, a separate admin port. uvicorn runs inside main.py's event loop; sockets
are bound here so a busy port is a clean startup error.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Protocol

import uvicorn
from fastapi import FastAPI

from app.ops.health import server_ready
from app.rest import ops_routes
from app.rest.admin_routes import admin_router, install_error_handler
from app.rest.api import TfServingRestApi
from app.rest.dashboard_routes import dashboard_router
from app.rest.edge import HttpLimits, edge_protocol
from app.rest.ops_routes import create_ops_app
from app.rest.v2_routes import V2RestApi
from app.settings.settings import Settings, request_tensor_limit_bytes

if TYPE_CHECKING:
    from app.admin.api import AdminApi
    from app.admin.tokens import AdminTokens
    from app.dashboard.stats import DashboardSources
    from app.serving.auth import InferenceAuth
    from app.serving.service import ServingService
    from app.settings.settings import Settings

log = logging.getLogger("tfgate.http")

MAX_REST_BODY_BYTES = 100 << 20  # TF Serving's own request-size ceiling
GRACEFUL_SHUTDOWN_SECONDS = 30


class Server(ops_routes.Server, Protocol):
    """What the HTTP servers use of the running server (main.Server), which keeps the uvicorn
    servers they start: main.py builds this module's servers, so this module names those parts
    instead of importing main."""

    settings: Settings
    service: ServingService
    inference_auth: InferenceAuth
    admin: AdminApi
    admin_tokens: AdminTokens
    dashboard: DashboardSources | None
    rest_server: uvicorn.Server | None
    admin_server: uvicorn.Server | None


class BindError(Exception):
    pass


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError(f"Failed to bind to {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def http_limits(settings: Settings) -> HttpLimits:
    return HttpLimits(
        max_connections=settings.rest_max_connections,
        header_timeout_seconds=settings.rest_header_timeout_seconds,
        body_timeout_seconds=settings.rest_body_timeout_seconds,
        max_body_bytes=MAX_REST_BODY_BYTES,
    )


async def serve_asgi(
    app: object,
    host: str,
    port: int,
    settings: Settings,
    ssl_cert_file: str = "",
    ssl_key_file: str = "",
) -> uvicorn.Server:
    """uvicorn on a socket bound here, with the edge limits of app/rest/edge.py."""
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        ssl_certfile=ssl_cert_file or None,
        ssl_keyfile=ssl_key_file or None,
        lifespan="off",
        access_log=False,
        log_level="warning",
        http=edge_protocol(http_limits(settings)),
        # Between requests on a keep-alive connection (uvicorn's own timer).
        timeout_keep_alive=settings.rest_idle_timeout_seconds,  # type: ignore[arg-type]
        # Nothing reads the client address, so X-Forwarded-For rewriting is per-request waste.
        proxy_headers=False,
        loop="none",
        date_header=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        h11_max_incomplete_event_size=MAX_REST_BODY_BYTES,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return server


def admin_port(server: Server) -> int:
    return server.settings.admin.port


def include_admin(app: FastAPI, server: Server) -> None:
    """The admin API and, beside it, the dashboard that calls it: on the REST port, or on
    the admin port when [admin] port is set (the page calls the admin API on its own
    origin)."""
    app.include_router(admin_router(server.admin, server.admin_tokens))
    if server.dashboard is not None:
        app.include_router(dashboard_router(server.dashboard, server.admin_tokens))


async def start_rest(server: Server) -> None:
    settings = server.settings
    if settings.rest_api_port == 0:
        return
    if settings.rest_api_port == settings.port:
        log.error(
            "--rest_api_port cannot be same as --port. Please use a different port for "
            "HTTP/REST API. Skipped exporting HTTP/REST API."
        )
        return
    ops_app = create_ops_app(server)
    install_error_handler(ops_app)
    if admin_port(server) == 0:
        include_admin(ops_app, server)
    app = TfServingRestApi(
        server.service,
        ops_app,
        timeout_ms=settings.rest_api_timeout_in_ms,
        enable_cors=settings.rest_api_enable_cors_support,
        max_body_bytes=MAX_REST_BODY_BYTES,
        auth=server.inference_auth,
        access_log=settings.access_log,
        max_tensor_bytes=request_tensor_limit_bytes(settings),
        v2_app=V2RestApi(
            server.service,
            server_ready=lambda: server_ready(server),
            timeout_ms=settings.rest_api_timeout_in_ms,
            max_body_bytes=MAX_REST_BODY_BYTES,
            auth=server.inference_auth,
            max_tensor_bytes=request_tensor_limit_bytes(settings),
            access_log=settings.access_log,
        ),
    )
    server.rest_server = await serve_asgi(
        app,
        settings.rest_api_host,
        settings.rest_api_port,
        settings,
        settings.rest_api_ssl_cert_file,
        settings.rest_api_ssl_key_file,
    )
    log.info("Exporting HTTP/REST API at:%s:%d ...", settings.rest_api_host, settings.rest_api_port)


async def start_admin(server: Server) -> None:
    """The admin API on its own port, when [admin] port is set."""
    port = admin_port(server)
    if port == 0:
        return
    host = server.settings.admin.host
    app = FastAPI(title="tfgate admin", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handler(app)
    include_admin(app, server)
    server.admin_server = await serve_asgi(app, host, port, server.settings)
    log.info("Exporting the admin API at %s:%d", host, port)
