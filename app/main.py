"""Composition root: builds every object, starts REST + gRPC + background tasks, shuts down
in reverse. The only place that knows how the pieces fit; nothing is built at import time.

Startup order follows TF Serving: workers start, the configured models load, and only when
every model has an AVAILABLE version do the servers listen (a failed initial load exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from typing import Any

import uvicorn

from app.admin.api import AdminApi
from app.admin.pin_state import PinState
from app.admin.tokens import AdminTokens
from app.cache.config import load_cache_config
from app.cache.result_cache import ResultCache
from app.core.errors import STARTUP_FAILURE_EXIT_STATUS, ServingError, StartupError
from app.core.state_events import StateEventBus
from app.dashboard.sampler import LoadSampler
from app.dashboard.stats import DashboardSources
from app.lifecycle.config_watch import ConfigWatcher
from app.lifecycle.discovery import Discovery
from app.lifecycle.manager import LoadOptions, VersionManager
from app.lifecycle.registry import Registry
from app.lifecycle.server_core import ServerCore
from app.ops import metrics as metrics_module
from app.ops.metrics import Metrics
from app.rest import server as http_server
from app.rpc import server as grpc_server
from app.runtime.pool import WorkerPool
from app.runtime.worker import PoolOptions
from app.serving import adaptive_batching
from app.serving.auth import InferenceAuth
from app.serving.batcher import Batcher
from app.serving.batching_policy import BatchingPolicy
from app.serving.service import ServingService
from app.settings import model_config
from app.settings.model_config import ModelConfig
from app.settings.session_bundle import SessionBundleSettings, session_bundle_settings
from app.settings.settings import Settings, SettingsError
from app.sync.config import load_sync_configs
from app.sync.loop import ModelSync
from app.traffic.router import TrafficRouter
from app.traffic.rules import TrafficRule, parse_rule

log = logging.getLogger("tfgate")

MAX_REST_BODY_BYTES = 100 << 20  # TF Serving's own request-size ceiling
DRAIN_SECONDS = 30.0


def detect_gpus() -> list[str]:
    """GPU ids visible to this process: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def pool_options(settings: Settings, bundle: SessionBundleSettings) -> PoolOptions:
    gpus = detect_gpus()
    if settings.num_gpu_workers >= 0:
        gpus = gpus[: settings.num_gpu_workers]
    return PoolOptions(
        num_workers=len(gpus) or settings.num_cpu_workers,
        gpu_ids=tuple(gpus),
        arena_bytes=settings.worker_arena_bytes,
        session_config=bundle.session_config,
        load_threads=max(1, settings.num_load_threads),
        watchdog_seconds=settings.worker_watchdog_seconds,
        log_level=settings.tensorflow_model_server_log_level.upper(),
    )


def model_configs(settings: Settings) -> list[ModelConfig]:
    if settings.model_config_file:
        configs = model_config.load_model_server_config(settings.model_config_file)
        model_config.check_platforms(configs)
        return configs
    return [model_config.single_model_config(settings.model_name, settings.model_base_path)]


@dataclasses.dataclass
class Server:
    """Everything one running server owns, in start order."""

    settings: Settings
    registry: Registry
    pool: WorkerPool
    batcher: Batcher
    manager: VersionManager
    discovery: Discovery
    service: ServingService
    metrics: Metrics
    admin: AdminApi
    admin_tokens: AdminTokens
    inference_auth: InferenceAuth
    core: ServerCore
    config_watcher: ConfigWatcher | None = None
    monitoring_path: str = ""
    model_sync: ModelSync | None = None
    cache: ResultCache | None = None
    dashboard: DashboardSources | None = None
    traffic: TrafficRouter | None = None
    rest_server: uvicorn.Server | None = None
    admin_server: uvicorn.Server | None = None
    grpc_server: Any = None
    draining: bool = False

    async def close(self) -> None:
        """Reverse order: stop listening, drain, stop background tasks, stop workers."""
        self.draining = True
        # Admin changes still waiting for a version answer 503 now instead of holding up
        # the HTTP servers' graceful drain.
        await self.admin.close()
        for http in (self.rest_server, self.admin_server):
            if http is not None:
                with contextlib.suppress(Exception):
                    await http.shutdown()
        if self.grpc_server is not None:
            with contextlib.suppress(Exception):
                await self.grpc_server.stop(DRAIN_SECONDS)
        if self.dashboard is not None:
            await self.dashboard.sampler.close()
        if self.config_watcher is not None:
            await self.config_watcher.close()
        if self.model_sync is not None:
            await self.model_sync.close()
        await self.discovery.close()
        await self.manager.close()
        if self.traffic is not None:
            await self.traffic.shadow.close()  # shadow copies still queued are dropped
        await self.batcher.close()
        if self.cache is not None:
            await self.cache.close()  # after the batcher: no request needs Redis any more
        await self.pool.close()


async def build_server(settings: Settings) -> Server:
    configs = model_configs(settings)
    registry = Registry(settings.allow_version_labels_for_unavailable_models)
    bundle = session_bundle_settings(settings)
    pool = WorkerPool(pool_options(settings, bundle))
    events = StateEventBus()
    batching_policy = BatchingPolicy(bundle, settings.batching_tables)
    # Adaptive batch sizes only where the worker shares the gateway's cores (CPU workers): a
    # GPU runs its configured batches faster than smaller ones would.
    adaptive = adaptive_batching.applies(settings.adaptive_batching, pool.options.gpu_ids)
    batcher = Batcher(pool, batching_policy, adaptive=adaptive)
    manager = version_manager(settings, bundle, registry, pool, events, batching_policy)
    core = ServerCore(
        registry,
        manager,
        events,
        file_system_poll_wait_seconds=settings.file_system_poll_wait_seconds,
        model_config_file=settings.model_config_file,
    )
    core.configure_initial(configs)
    cache_config = load_cache_config(settings.cache) if settings.cache else None
    cache = ResultCache(cache_config) if cache_config is not None else None
    traffic = TrafficRouter()
    service = ServingService(
        registry,
        batcher,
        enable_signature_method_name_check=settings.enable_signature_method_name_check,
        cache=cache,
        traffic=traffic,
    )
    metrics = Metrics()
    metrics_module.connect(metrics, service, batcher, pool, manager)
    metrics_module.connect_traffic(metrics, traffic)
    admin = settings.admin
    pins = PinState(admin.state_file or None)
    core.attach_traffic(traffic, pins.file, traffic_rules(settings))
    if cache is not None:
        for metric in cache.metrics.all():
            metrics.add(metric)
    server = Server(
        settings,
        registry,
        pool,
        batcher,
        manager,
        core.discovery,
        service,
        metrics,
        admin=AdminApi(core, pins, load_wait_seconds=admin.load_wait_seconds),
        admin_tokens=AdminTokens.load(admin.tokens_file or None, settings.admin_env_tokens),
        inference_auth=inference_auth(settings),
        core=core,
        monitoring_path=monitoring_path(settings),
        cache=cache,
        traffic=traffic,
    )
    if cache is not None:
        server.admin.add_describe_extras(cache.describe)  # hit ratio per model
    server.dashboard = dashboard_sources(server)
    attach_model_sync(server, configs)
    if settings.model_config_file:
        server.config_watcher = ConfigWatcher(
            settings.model_config_file,
            settings.model_config_file_poll_wait_seconds,
            core.apply_model_config,
        )
    return server


def dashboard_sources(server: Server) -> DashboardSources:
    """What /dashboard reads (through its token-checked stats route): sampled load, the
    worker processes, draining, and the result cache's overview."""
    return DashboardSources(
        sampler=LoadSampler(server.metrics),
        workers=server.pool.describe_workers,
        draining=lambda: server.draining,
        cache=server.cache.overview if server.cache is not None else None,
    )


def version_manager(
    settings: Settings,
    bundle: SessionBundleSettings,
    registry: Registry,
    pool: WorkerPool,
    events: StateEventBus,
    batching_policy: BatchingPolicy,
) -> VersionManager:
    """The transition planner, with the load options TF Serving's flags and session config set."""
    return VersionManager(
        registry,
        pool,
        LoadOptions(
            tags=bundle.saved_model_tags,
            enable_warmup=bundle.enable_model_warmup,
            warmup_iterations=bundle.warmup_iterations,
            max_num_load_retries=settings.max_num_load_retries,
            load_retry_interval_seconds=settings.load_retry_interval_micros / 1e6,
        ),
        events,
        before_load=batching_policy.read_version_file,
    )


def attach_model_sync(server: Server, configs: list[ModelConfig]) -> None:
    """Model sync for the [models.NAME.sync] tables (none: no sync task at all)."""
    settings = server.settings
    read_sync_configs = functools.partial(
        load_sync_configs, settings.sync_tables, config_file=settings.file.path
    )
    sync_configs = read_sync_configs({c.name: c.base_path for c in configs})
    waiting = sorted(set(settings.sync_tables) - {c.model for c in sync_configs})
    for name in waiting:
        log.warning(
            "[models.%s.sync]: no model named %r is configured yet; its sync starts when a "
            "model config reload adds it",
            name,
            name,
        )
    if sync_configs or waiting:
        server.model_sync = ModelSync(sync_configs, server.metrics)
        server.core.attach_model_sync(server.model_sync, read_sync_configs)
        server.admin.add_describe_extras(server.model_sync.describe)


def traffic_rules(settings: Settings) -> dict[str, TrafficRule]:
    """The [models.NAME.traffic] tables as validated rules; SettingsError names the table."""
    rules = {}
    for name, table in sorted(settings.traffic_tables.items()):
        try:
            rules[name] = parse_rule(table)
        except ValueError as exc:
            raise SettingsError(
                f"[models.{name}.traffic]: {exc}{settings.file.where() or ' (in config)'}"
            ) from None
    return rules


def inference_auth(settings: Settings) -> InferenceAuth:
    keys_file = settings.auth.api_keys_file
    return InferenceAuth.from_file(keys_file) if keys_file else InferenceAuth.disabled()


def monitoring_path(settings: Settings) -> str:
    """TF Serving serves Prometheus metrics only when the monitoring config enables it, and
    reads that file only when it serves REST at all."""
    if not settings.monitoring_config_file or not settings.rest_api_port:
        return ""
    config = model_config.load_monitoring_config(settings.monitoring_config_file)
    if not config.prometheus_config.enable:
        return ""
    return config.prometheus_config.path or "/monitoring/prometheus/metrics"


async def wait_for_initial_models(server: Server) -> None:
    """Block until every configured model has an AVAILABLE version; raise on a failed load.
    A model with no version on disk yet is waited for indefinitely, as TF Serving does."""
    await server.core.wait_for_initial_models()


def tune_garbage_collector() -> None:
    """The request path allocates many short-lived objects (parsed JSON, protos) and frees
    them by reference counting; CPython's default gen-0 threshold (700 allocations) then
    runs cycle collections over the whole young heap thousands of times a second. Measured
    on the cnn workload: gateway CPU per request 864 -> 536 us. The heap built at startup
    is frozen out of collection altogether."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


# File descriptors kept for everything but client connections: workers' pipes and arenas,
# model files, Redis, S3, logs.
RESERVED_FDS = 256


def fit_connection_caps(settings: Settings) -> None:
    """Raise the soft file-descriptor limit to the hard one, then lower --rest_max_connections
    and --grpc_max_connections if together they would not fit it: a cap above the limit
    would let idle sockets lock every client out with EMFILE instead of being refused."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        return
    room = max(2, soft - RESERVED_FDS)
    flags = settings.flags
    wanted = flags.rest_max_connections + flags.grpc_max_connections
    if wanted <= room:
        return
    flags.rest_max_connections = max(1, flags.rest_max_connections * room // wanted)
    flags.grpc_max_connections = max(1, flags.grpc_max_connections * room // wanted)
    log.warning(
        "File descriptor limit %d: connection caps lowered to --rest_max_connections=%d "
        "--grpc_max_connections=%d",
        soft,
        flags.rest_max_connections,
        flags.grpc_max_connections,
    )


async def run(settings: Settings) -> int:
    """Run one server until SIGTERM/SIGINT; returns the process exit code."""
    fit_connection_caps(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await build_server(settings)
    except (model_config.ConfigError, SettingsError) as exc:
        print(str(exc), file=sys.stderr)
        return STARTUP_FAILURE_EXIT_STATUS
    await server.pool.start()
    server.batcher.start()
    if server.dashboard is not None:
        server.dashboard.sampler.start()
    try:
        server.admin.restore_pins()
        server.core.restore_traffic()  # after the pins: a pinned model keeps its pin
        if server.traffic is not None:
            server.traffic.shadow.start()
        if server.model_sync is not None:
            server.model_sync.start()  # before the initial wait: remote-only models arrive
        if settings.file_system_poll_wait_seconds >= 0:
            server.discovery.scan()
        server.discovery.start()  # its polls find versions the initial wait waits for
        if server.config_watcher is not None:
            with open(settings.model_config_file, encoding="utf-8") as f:
                server.config_watcher.remember(f.read())
        waiter = asyncio.create_task(wait_for_initial_models(server))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            waiter.cancel()
            return 0
        stopper.cancel()
        waiter.result()
        if server.config_watcher is not None:
            server.config_watcher.start()
        # gRPC first: once the REST port answers, every listener is up.
        server.grpc_server = await grpc_server.start(server)
        await http_server.start_rest(server)
        await http_server.start_admin(server)
        tune_garbage_collector()
        log.info("tfgate is serving %d model(s)", len(server.registry.models))
        await stop.wait()
        log.info("Shutting down: draining in-flight requests")
        return 0
    except (StartupError, ServingError, http_server.BindError, model_config.ConfigError) as exc:
        print(getattr(exc, "message", str(exc)), file=sys.stderr)
        return STARTUP_FAILURE_EXIT_STATUS
    finally:
        await server.close()
