"""Composition root: builds every object, starts REST + gRPC + background tasks, shuts down
in reverse. The only place that knows how the pieces fit; nothing is built at import time.

Startup order follows TF Serving: workers start, the configured models load, and only when
every model has an AVAILABLE version do the servers listen (a failed initial load exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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

from app import grpc_server, http_server, model_config
from app import metrics as metrics_module
from app.admin import LOAD_WAIT_SECONDS, AdminApi, AdminTokens, PinState
from app.auth import InferenceAuth
from app.batcher import Batcher
from app.batching_policy import BatchingPolicy
from app.cache import ResultCache
from app.cache_config import load_cache_config
from app.config_watch import ConfigWatcher
from app.discovery import Discovery
from app.errors import STARTUP_FAILURE_EXIT_STATUS, Code, ServingError, StartupError
from app.manager import LoadOptions, VersionManager, initial_load_error
from app.metrics import Metrics
from app.model_sync import SyncConfig
from app.model_sync_loop import ModelSync, load_sync_configs, sync_table_models
from app.registry import ModelConfig, Registry
from app.service import ServingService
from app.session_bundle import SessionBundleSettings, session_bundle_settings
from app.settings import Settings, SettingsError
from app.worker_pool import WorkerPool
from app.worker_process import PoolOptions

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
    config_watcher: ConfigWatcher | None = None
    monitoring_path: str = ""
    model_sync: ModelSync | None = None
    cache: ResultCache | None = None
    rest_server: uvicorn.Server | None = None
    admin_server: uvicorn.Server | None = None
    grpc_server: Any = None
    draining: bool = False
    # gRPC HandleReloadConfigRequest, the config file watcher and admin all reload configs.
    _reload_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    # models added by a reload and not AVAILABLE yet: every reload listing one waits for it
    _awaited: set[str] = dataclasses.field(default_factory=set)

    async def reload_config_file(self, wait_seconds: float | None = None) -> None:
        """Admin 'reload config': re-read --model_config_file now; then as
        reload_model_config."""
        if self.config_watcher is None:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                "The server was not started with --model_config_file; nothing to reload",
            )
        try:
            configs = model_config.load_model_server_config(self.config_watcher.path)
        except model_config.ConfigError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None
        await self.reload_model_config(configs, wait_seconds)

    async def reload_model_config(
        self, configs: list[ModelConfig], wait_seconds: float | None = None
    ) -> None:
        """Full replacement (TF Serving's ReloadConfig): models not listed unload, new ones
        load; returns once every new model (and every model of this config an earlier
        reload still waits for) has an AVAILABLE version, raises if one failed.

        Only applying the config holds the reload lock. The wait for the new models does
        not: a new model with no version on disk yet keeps its caller waiting (as in TF
        Serving) but must not stop the next reload, admin change or config file poll.
        `wait_seconds` bounds the wait (DEADLINE_EXCEEDED); None waits as long as the caller
        does (gRPC: until its deadline).
        """
        async with self._reload_lock:
            self._awaited |= set(await self._apply_model_config(configs))
            # As TF Serving, whose reloads hold its config lock while they wait: a reload
            # also waits for models of its config that an earlier reload is waiting for.
            awaited = [c.name for c in configs if c.name in self._awaited]
        try:
            async with asyncio.timeout(wait_seconds):
                await self._wait_available(awaited)
        except TimeoutError:
            waiting = self._unavailable(awaited)
            raise ServingError(
                Code.DEADLINE_EXCEEDED,
                f"The model config was applied, but model(s) {', '.join(waiting)} have no "
                f"available version after {wait_seconds:g} s (is there a version directory "
                "under the base path?); they load when one appears",
            ) from None

    async def apply_model_config(self, configs: list[ModelConfig]) -> None:
        """Apply a model config without waiting for its new models (the file watcher:
        their loads and failures are logged by the manager)."""
        async with self._reload_lock:
            self._awaited |= set(await self._apply_model_config(configs))

    async def _apply_model_config(self, configs: list[ModelConfig]) -> list[str]:
        """The config change itself; returns the names of the models it added."""
        self._awaited &= {c.name for c in configs}
        self._check_platforms(configs)
        sync_configs = self._sync_configs_for(configs)  # a bad table rejects the whole reload
        label_error = self.registry.reload_label_error(configs)
        if label_error is not None:  # TF Serving rejects it before any model changes
            raise ServingError(Code.FAILED_PRECONDITION, label_error)
        before = set(self.registry.models) - self.registry.dropped
        dropped = self.registry.configure(configs)
        for name in dropped:
            self.discovery.forget(name)
            self.manager.reconcile(name)
        if self.model_sync is not None and sync_configs is not None:
            # before the scan: a newly added model's base path is created by its sync
            await self.model_sync.update(sync_configs)
        self.discovery.scan([c.name for c in configs])
        for config in configs:
            self.manager.reconcile(config.name)  # labels or policy may have changed
        return [c.name for c in configs if c.name not in before]

    def _unavailable(self, names: list[str]) -> list[str]:
        """Those of `names` still configured (a later reload may have removed one) that
        have no AVAILABLE version."""
        return [
            name for name in names
            if (record := self.registry.configured(name)) is not None
            and not record.available_versions()
        ]

    async def _wait_available(self, names: list[str]) -> None:
        """Until every model of `names` has an AVAILABLE version; raises TF Serving's error
        if a load failed, ABORTED if a later reload removed one of them."""
        while waiting := self._unavailable(names):
            for name in waiting:
                await self.manager.wait_idle(name)
            error = initial_load_error(self.registry, self._unavailable(waiting))
            if error is not None:
                self._awaited -= set(waiting)  # failed: later reloads need not wait for it
                raise error
            self.discovery.scan(waiting)
            await asyncio.sleep(0.1)
        removed = [n for n in names if self.registry.configured(n) is None]
        if removed:
            raise ServingError(
                Code.ABORTED,
                f"Model(s) {', '.join(removed)} were removed by a later config reload before "
                "they became available",
            )
        self._awaited -= set(names)

    def _check_platforms(self, configs: list[ModelConfig]) -> None:
        """ServerCore::ValidateNoModelsChangePlatforms, then the platforms tfgate serves."""
        for config in configs:
            current = self.registry.configured(config.name)
            if current is None:
                continue
            if config.platform != current.config.platform:
                raise ServingError(
                    Code.INVALID_ARGUMENT,
                    f"Illegal to change a model's platform. For model {config.name} platform "
                    f"was {current.config.platform} and new platform requested is "
                    f"{config.platform}",
                )
        try:
            model_config.check_platforms(configs)
        except model_config.ConfigError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None

    def _sync_configs_for(self, configs: list[ModelConfig]) -> list[SyncConfig] | None:
        """The model sync set for a new model config (None when sync is not configured)."""
        if self.model_sync is None:
            return None
        try:
            return load_sync_configs(self.settings.config, {c.name: c.base_path for c in configs})
        except SettingsError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None

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
        if self.config_watcher is not None:
            await self.config_watcher.close()
        if self.model_sync is not None:
            await self.model_sync.close()
        await self.discovery.close()
        await self.manager.close()
        await self.batcher.close()
        if self.cache is not None:
            await self.cache.close()  # after the batcher: no request needs Redis any more
        await self.pool.close()


async def build_server(settings: Settings) -> Server:
    configs = model_configs(settings)
    registry = Registry(settings.allow_version_labels_for_unavailable_models)
    registry.configure(configs)
    bundle = session_bundle_settings(settings)
    pool = WorkerPool(pool_options(settings, bundle))
    batching_policy = BatchingPolicy(bundle, settings.config)
    batcher = Batcher(pool, batching_policy)
    manager = VersionManager(
        registry,
        pool,
        LoadOptions(
            tags=bundle.saved_model_tags,
            enable_warmup=bundle.enable_model_warmup,
            warmup_iterations=bundle.warmup_iterations,
            max_num_load_retries=settings.max_num_load_retries,
            load_retry_interval_seconds=settings.load_retry_interval_micros / 1e6,
        ),
        before_load=batching_policy.read_version_file,
    )
    discovery = Discovery(registry, manager.reconcile, settings.file_system_poll_wait_seconds)
    cache_config = load_cache_config(settings)
    cache = ResultCache(cache_config) if cache_config is not None else None
    service = ServingService(
        registry,
        batcher,
        enable_signature_method_name_check=settings.enable_signature_method_name_check,
        cache=cache,
    )
    metrics = Metrics()
    metrics_module.connect(metrics, service, batcher, pool, manager)
    if cache is not None:
        for metric in cache.metrics.all():
            metrics.add(metric)
    admin_section = settings.config.get("admin", {})
    server = Server(
        settings,
        registry,
        pool,
        batcher,
        manager,
        discovery,
        service,
        metrics,
        admin=None,  # type: ignore[arg-type]  # set below: it needs the server's reload
        admin_tokens=AdminTokens.load(admin_section.get("tokens_file")),
        inference_auth=inference_auth(settings),
        monitoring_path=monitoring_path(settings),
        cache=cache,
    )
    server.admin = AdminApi(
        registry,
        manager,
        discovery,
        PinState(admin_section.get("state_file")),
        server.reload_config_file,
        load_wait_seconds=admin_load_wait_seconds(admin_section),
    )
    if cache is not None:
        server.admin.add_describe_extras(cache.describe)  # hit ratio per model
    sync_configs = load_sync_configs(settings.config, {c.name: c.base_path for c in configs})
    waiting = sorted(set(sync_table_models(settings.config)) - {c.model for c in sync_configs})
    for name in waiting:
        log.warning(
            "[models.%s.sync]: no model named %r is configured yet; its sync starts when a "
            "model config reload adds it",
            name,
            name,
        )
    if sync_configs or waiting:
        server.model_sync = ModelSync(sync_configs, metrics)
        server.admin.add_describe_extras(server.model_sync.describe)
        if settings.file_system_poll_wait_seconds <= 0:
            log.warning(
                "Model sync is configured but --file_system_poll_wait_seconds=%d: synced "
                "versions are only loaded when something else rescans the base path",
                settings.file_system_poll_wait_seconds,
            )
    if settings.model_config_file:
        server.config_watcher = ConfigWatcher(
            settings.model_config_file,
            settings.model_config_file_poll_wait_seconds,
            server.apply_model_config,
        )
    return server


def admin_load_wait_seconds(admin_section: dict[str, Any]) -> float:
    value = admin_section.get("load_wait_seconds", LOAD_WAIT_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SettingsError(
            f"[admin] load_wait_seconds must be a positive number of seconds, got {value!r}"
        )
    return float(value)


def inference_auth(settings: Settings) -> InferenceAuth:
    keys_file = settings.config.get("auth", {}).get("api_keys_file")
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
    registry, manager = server.registry, server.manager
    while True:
        error = initial_load_error(registry)
        if error is not None:
            raise StartupError(error.message)
        if registry.all_available():
            return
        async with manager.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(manager.changed.wait(), 1.0)
        if server.settings.file_system_poll_wait_seconds > 0:
            server.discovery.scan()


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
    wanted = flags["rest_max_connections"] + flags["grpc_max_connections"]
    if wanted <= room:
        return
    for name in ("rest_max_connections", "grpc_max_connections"):
        flags[name] = max(1, flags[name] * room // wanted)
    log.warning(
        "File descriptor limit %d: connection caps lowered to --rest_max_connections=%d "
        "--grpc_max_connections=%d",
        soft,
        flags["rest_max_connections"],
        flags["grpc_max_connections"],
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
    try:
        server.admin.restore_pins()
        if server.model_sync is not None:
            server.model_sync.start()  # before the initial wait: remote-only models arrive
        if settings.file_system_poll_wait_seconds >= 0:
            server.discovery.scan()
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
        server.discovery.start()
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
