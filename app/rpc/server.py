"""gRPC front: the server TF Serving's clients talk to, on --port and --grpc_socket_path.

Data path position: gRPC request -> grpc_services (ModelSpec + codec_proto decode) ->
service -> codec_proto encode -> gRPC response. This module only builds and starts the
server the way TF Serving's server.cc does: listening addresses, INT32_MAX message sizes,
--grpc_max_threads (a limit on concurrent RPCs), TLS / mutual TLS from --ssl_config_file,
grpc.health.v1 behind --enable_grpc_healthcheck_service, and server reflection (always on;
a tfgate addition).

Two servers carry the same servicers: tfgate's own HTTP/2 one (app/rpc/h2/server.py, the
default, --grpc_implementation=h2: a quarter to a half of grpc.aio's gateway CPU per call,
held to grpc core's limits by tests/adversarial/) and grpc.aio (--grpc_implementation=grpcio,
on gRPC's C core). --grpc_channel_arguments are grpc core's, so they select grpc.aio.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from app.core.errors import StartupError
from app.core.protos import model_service_pb2_grpc, prediction_service_pb2_grpc
from app.ops.health import server_ready
from app.ops.metric_types import CallbackCounter, CallbackGauge
from app.rpc.admin import AdminServicer
from app.rpc.h2.frame_quota import FrameQuota
from app.rpc.h2.limits import H2Limits
from app.rpc.h2.quota import RequestQuota
from app.rpc.h2.server import GrpcH2Server
from app.rpc.services import ModelServicer, PredictionServicer
from app.rpc.v2_service import SERVICE_NAME as V2_SERVICE
from app.rpc.v2_service import V2InferenceServicer
from app.settings import model_config
from app.settings.settings import MESSAGE_HEADROOM_BYTES as MESSAGE_HEADROOM_BYTES
from app.settings.settings import (
    grpc_receive_limit_bytes,
    request_buffer_quota_bytes,
    request_tensor_limit_bytes,
)
from proto import admin_pb2, admin_pb2_grpc, open_inference_pb2_grpc

if TYPE_CHECKING:
    from app.admin.api import AdminApi
    from app.admin.tokens import AdminTokens
    from app.ops.metrics import Metrics
    from app.serving.auth import InferenceAuth
    from app.serving.service import ServingService
    from app.settings.model_config import ModelConfig
    from app.settings.settings import Settings

log = logging.getLogger("tfgate.grpc")

INT32_MAX = 2**31 - 1
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
# server.cc marks "ModelService" and "PredictionService" SERVING once it listens, and gRPC
# C++'s default health service reports "" (the whole server) SERVING. The fully qualified
# names are a tfgate addition: probes that use them get an answer instead of NOT_FOUND.
HEALTH_SERVICE_NAMES = ("", "ModelService", "PredictionService", PREDICTION_SERVICE, MODEL_SERVICE)


class GrpcStartupError(StartupError):
    """The gRPC server cannot start (bad flag, bad SSL config, address in use)."""


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """--grpc_channel_arguments as server.cc parses it: comma-separated key=value, the value
    passed as an int when it parses as int32, else as a string."""
    arguments: list[tuple[str, int | str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, has_value, value = item.partition("=")
        if not has_value or not key.strip():
            raise GrpcStartupError(
                f"Invalid --grpc_channel_arguments entry {item!r}: expected key=value"
            )
        arguments.append((key.strip(), _int32_or_text(value.strip())))
    return arguments


def _int32_or_text(value: str) -> int | str:
    try:
        number = int(value)
    except ValueError:
        return value
    return number if -(2**31) <= number <= INT32_MAX else value


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """TF Serving's fixed options, tfgate's connection limits, then the user's channel
    arguments (which win).

    A request message is capped at the request tensor limit plus MESSAGE_HEADROOM_BYTES (TF
    Serving allows INT32_MAX): tensors past the limit are refused after decoding anyway, so
    buffering a larger message only costs memory; grpc core answers RESOURCE_EXHAUSTED.
    """
    max_message = grpc_receive_limit_bytes(settings)
    options: dict[str, Any] = {
        "grpc.max_send_message_length": INT32_MAX,
        "grpc.max_receive_message_length": max_message,
        # Checked before the handshake: a connection past the cap is closed at once.
        "grpc.max_allowed_incoming_connections": settings.grpc_max_connections,
        # TCP accepted but TLS / HTTP/2 preface not done by then: closed.
        "grpc.server_handshake_timeout_ms": _millis(settings.grpc_handshake_timeout_seconds),
    }
    if settings.grpc_idle_timeout_seconds > 0:
        # No call in flight for this long: GOAWAY, then closed (clients reconnect on demand).
        options["grpc.max_connection_idle_ms"] = _millis(settings.grpc_idle_timeout_seconds)
    options.update(keepalive_options(settings))
    options.update(parse_channel_arguments(settings.grpc_channel_arguments))
    return list(options.items())


def keepalive_options(settings: Settings) -> dict[str, int]:
    """The keepalive and ping-abuse flags the h2 transport enforces (rpc/h2/keepalive.py), as
    grpc core's channel arguments, so grpc.aio honours them too. Their defaults are grpc
    core's own: left alone, they change nothing."""
    keepalive_seconds = settings.grpc_keepalive_time_seconds
    return {
        # 0 = never; grpc core's "never" is INT_MAX
        "grpc.keepalive_time_ms": _millis(keepalive_seconds) if keepalive_seconds else INT32_MAX,
        "grpc.keepalive_timeout_ms": _millis(settings.grpc_keepalive_timeout_seconds),
        "grpc.http2.min_ping_interval_without_data_ms": min(
            INT32_MAX, round(settings.grpc_min_recv_ping_interval_without_data_seconds * 1000)
        ),
        "grpc.http2.max_ping_strikes": min(INT32_MAX, settings.grpc_max_ping_strikes),
        "grpc.keepalive_permit_without_calls": int(settings.grpc_keepalive_permit_without_calls),
    }


def _millis(seconds: float) -> int:
    return max(1, min(INT32_MAX, round(seconds * 1000)))


def _ssl_config(ssl_config_file: str) -> Any:
    try:
        config = model_config.load_ssl_config(ssl_config_file)
    except model_config.ConfigError as exc:
        raise GrpcStartupError(str(exc)) from None
    if not config.server_key or not config.server_cert:
        raise GrpcStartupError(
            f"SSL config {ssl_config_file} must set both server_key and server_cert"
        )
    return config


def server_credentials(ssl_config_file: str) -> grpc.ServerCredentials | None:
    """SSLConfig -> grpc.aio server credentials; None means plaintext. client_verify
    requires and verifies a client certificate (mutual TLS) against custom_ca, or the
    system roots."""
    if not ssl_config_file:
        return None
    config = _ssl_config(ssl_config_file)
    roots: bytes | None = None
    if config.client_verify:
        roots = config.custom_ca.encode() if config.custom_ca else _system_roots()
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=roots,
        require_client_auth=config.client_verify,
    )


def server_ssl_context(ssl_config_file: str) -> ssl.SSLContext | None:
    """SSLConfig -> the TLS context of tfgate's HTTP/2 server (ALPN h2, TLS 1.2+), with the
    same client_verify rule as server_credentials()."""
    if not ssl_config_file:
        return None
    config = _ssl_config(ssl_config_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    # load_cert_chain reads files only: the PEM texts go through a private directory.
    with tempfile.TemporaryDirectory(prefix="tfgate-tls-") as directory:
        cert_path = os.path.join(directory, "cert.pem")
        key_path = os.path.join(directory, "key.pem")
        for path, text in ((cert_path, config.server_cert), (key_path, config.server_key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(text)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise GrpcStartupError(
                f"Failed to BuildAndStart gRPC server: SSL config {ssl_config_file}: {exc}"
            ) from None
    if config.client_verify:
        context.verify_mode = ssl.CERT_REQUIRED
        roots = config.custom_ca or _system_roots().decode()
        try:
            context.load_verify_locations(cadata=roots)
        except ssl.SSLError as exc:
            raise GrpcStartupError(
                f"Failed to BuildAndStart gRPC server: SSL config {ssl_config_file} custom_ca: "
                f"{exc}"
            ) from None
    return context


def _system_roots() -> bytes:
    """gRPC C++ verifies client certificates against its default roots when custom_ca is
    empty; Python's gRPC needs them spelled out."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile):
        if path:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError:
                continue
    raise GrpcStartupError(
        "client_verify is set but custom_ca is empty and no system CA bundle was found"
    )


def listen_addresses(settings: Settings) -> list[tuple[str, str]]:
    """(address, description) pairs: TCP unless --port=0, plus the UNIX socket if set."""
    addresses = []
    if settings.port != 0:
        host = settings.grpc_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        addresses.append((f"{host}:{settings.port}", f"{settings.grpc_host}:{settings.port}"))
    if settings.grpc_socket_path:
        addresses.append(
            (f"unix:{settings.grpc_socket_path}", f"UNIX socket {settings.grpc_socket_path}")
        )
    return addresses


class Server(Protocol):
    """What the gRPC server uses of the running server (main.Server): main.py builds this
    module's server, so this module names those parts instead of importing main."""

    settings: Settings
    service: ServingService
    inference_auth: InferenceAuth
    metrics: Metrics
    admin: AdminApi
    admin_tokens: AdminTokens

    async def reload_model_config(
        self, configs: list[ModelConfig], wait_seconds: float | None = None
    ) -> None: ...


def uses_grpcio(settings: Settings) -> bool:
    return settings.grpc_implementation == "grpcio" or bool(settings.grpc_channel_arguments)


def _add_servicers(server: Server, grpc_server: Any) -> list[str]:
    """Register tfgate's services on either server; returns their names for reflection."""
    settings = server.settings
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(
            server.service,
            use_tensor_content=settings.enable_serialization_as_tensor_content,
            auth=server.inference_auth,
            max_tensor_bytes=request_tensor_limit_bytes(settings),
        ),
        grpc_server,
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(
            server.service,
            server.core.reload_model_config,
            server.inference_auth,
            server.metrics.counter_total,
            server.admin_tokens,
        ),
        grpc_server,
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(server.admin, server.admin_tokens), grpc_server
    )
    # The Open Inference Protocol (V2) beside TF Serving's API, on the same port and path.
    open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        V2InferenceServicer(
            server.service,
            server_ready=lambda: server_ready(server),
            auth=server.inference_auth,
            max_tensor_bytes=request_tensor_limit_bytes(settings),
        ),
        grpc_server,
    )
    return [PREDICTION_SERVICE, MODEL_SERVICE, ADMIN_SERVICE, V2_SERVICE]


def _add_health_and_reflection(
    settings: Settings, grpc_server: Any, service_names: list[str]
) -> grpc_health.aio.HealthServicer | None:
    health: grpc_health.aio.HealthServicer | None = None
    if settings.enable_grpc_healthcheck_service:
        health = grpc_health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, grpc_server)
        service_names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    service_names.append(reflection.SERVICE_NAME)
    # The asyncio reflection servicer whichever server it runs on (enable_server_reflection
    # picks the threaded one for anything but a grpc.aio server).
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(service_names), grpc_server
    )
    return health


async def start(server: Server) -> grpc.aio.Server | GrpcH2Server:
    """Build, bind and start the gRPC server for `server` (main.Server); returns it so
    main.Server.close() can stop it with a grace period."""
    settings = server.settings
    addresses = listen_addresses(settings)
    if uses_grpcio(settings):
        grpc_server: Any = await _start_grpcio(server, addresses)
        why = (
            "--grpc_channel_arguments" if settings.grpc_channel_arguments
            else "--grpc_implementation=grpcio"
        )
        log.info("gRPC served by grpc.aio (%s)", why)
    else:
        grpc_server = await _start_h2(server, addresses)
        log.info("gRPC served by tfgate's HTTP/2 server (--grpc_implementation=h2)")
    for _, description in addresses:
        log.info("Running gRPC ModelServer at %s ...", description)
    return grpc_server


def h2_limits(settings: Settings) -> H2Limits:
    """The h2 server's limits from the flags; its receive message limit is the one grpc.aio
    serves with (server_options()), so both transports refuse the same messages."""
    receive_bytes = dict(server_options(settings))["grpc.max_receive_message_length"]
    return H2Limits(
        max_connections=settings.grpc_max_connections,
        idle_timeout_seconds=settings.grpc_idle_timeout_seconds,
        handshake_timeout_seconds=settings.grpc_handshake_timeout_seconds,
        max_concurrent_streams=settings.grpc_max_concurrent_streams,
        max_buffered_request_bytes=request_buffer_quota_bytes(settings),
        keepalive_time_seconds=settings.grpc_keepalive_time_seconds,
        keepalive_timeout_seconds=settings.grpc_keepalive_timeout_seconds,
        min_recv_ping_interval_without_data_seconds=(
            settings.grpc_min_recv_ping_interval_without_data_seconds),
        max_ping_strikes=settings.grpc_max_ping_strikes,
        keepalive_permit_without_calls=settings.grpc_keepalive_permit_without_calls,
        max_receive_message_bytes=(
            receive_bytes if isinstance(receive_bytes, int) and receive_bytes >= 0
            else INT32_MAX
        ),
    )


async def _start_h2(server: Server, addresses: list[tuple[str, str]]) -> GrpcH2Server:
    settings = server.settings
    h2_server = GrpcH2Server(max(0, settings.grpc_max_threads), h2_limits(settings))
    add_request_buffer_metrics(server.metrics, h2_server.request_quota, h2_server.frame_quota)
    health = _add_health_and_reflection(settings, h2_server, _add_servicers(server, h2_server))
    context = server_ssl_context(settings.ssl_config_file)
    for address, _ in addresses:
        try:
            await h2_server.listen(address, context)
        except OSError as exc:
            await h2_server.stop(0)
            raise GrpcStartupError(
                f"Failed to BuildAndStart gRPC server: cannot bind {address}: {exc.strerror}"
            ) from None
    await _mark_serving(health)
    return h2_server


def add_request_buffer_metrics(
    metrics: Metrics, quota: RequestQuota, frames: FrameQuota
) -> None:
    """The h2 transport's server-wide request buffer and incomplete-frame counts on
    /metrics, read at scrape time."""
    metrics.add(CallbackGauge(
        "tfgate_grpc_buffered_request_bytes",
        "Request bytes the h2 gRPC transport holds before handlers take them (partly "
        "received unary messages, queued streaming messages), all connections together; "
        "at most --grpc_max_buffered_request_bytes.",
        (),
        lambda: [((), float(quota.held_bytes))],
    ))
    metrics.add(CallbackCounter(
        "tfgate_grpc_request_buffer_refusals_total",
        "gRPC calls the h2 transport failed with RESOURCE_EXHAUSTED because their request "
        "bytes would pass --grpc_max_buffered_request_bytes.",
        (),
        lambda: [((), float(quota.refused_calls))],
    ))
    metrics.add(CallbackGauge(
        "tfgate_grpc_incomplete_frame_bytes",
        "Bytes of incomplete HTTP/2 frames waiting in the h2 gRPC transport's read buffers, "
        "all connections together (at most one frame each).",
        (),
        lambda: [((), float(frames.held_bytes))],
    ))
    metrics.add(CallbackCounter(
        "tfgate_grpc_frame_quota_closes_total",
        "h2 gRPC connections closed with ENHANCE_YOUR_CALM to keep incomplete frames within "
        "their quota (a stalled frame evicted, or no room for a new one).",
        (),
        lambda: [((), float(frames.closed))],
    ))


class GenericHandlersOnly:
    """What the generated add_*_to_server functions see of a grpc.aio server: their generic
    handlers go in, their registered-method tables are left out.

    grpcio's generated code adds each service twice, as a generic handler and as registered
    methods (TF Serving's own generated modules do only the former). grpc.aio keeps one
    pending request-call future per registered method beside the one for generic calls, and
    its accept loop runs asyncio.wait() over all of them for every call it accepts: with
    health (3), reflection (1) and admin (8) registered that is 13 futures instead of 1, ~5 us
    more of event-loop time per accepted call (Predict included, though it is generic) for
    methods that are called rarely. The generic handler the same add_* call adds serves
    exactly those methods.
    """

    def __init__(self, grpc_server: Any) -> None:
        self._server = grpc_server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        """Left out: served by the generic handler of the same service (see above)."""


async def _start_grpcio(server: Server, addresses: list[tuple[str, str]]) -> grpc.aio.Server:
    settings = server.settings
    max_rpcs = settings.grpc_max_threads if settings.grpc_max_threads > 0 else None
    grpc_server = grpc.aio.server(
        options=server_options(settings), maximum_concurrent_rpcs=max_rpcs
    )
    target = GenericHandlersOnly(grpc_server)
    health = _add_health_and_reflection(settings, target, _add_servicers(server, target))
    credentials = server_credentials(settings.ssl_config_file)
    for address, _ in addresses:
        _bind(grpc_server, address, credentials)
    await grpc_server.start()
    await _mark_serving(health)
    return grpc_server


async def _mark_serving(health: grpc_health.aio.HealthServicer | None) -> None:
    if health is not None:
        for name in HEALTH_SERVICE_NAMES:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)


def _bind(
    grpc_server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> None:
    try:
        if credentials is None:
            bound = grpc_server.add_insecure_port(address)
        else:
            bound = grpc_server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise GrpcStartupError(f"Failed to BuildAndStart gRPC server: {exc}") from None
    if bound == 0 and not address.startswith("unix:"):
        raise GrpcStartupError(f"Failed to BuildAndStart gRPC server: cannot bind {address}")
