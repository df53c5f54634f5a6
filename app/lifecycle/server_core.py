"""ServerCore: the one owner of model state changes, as TF Serving's ServerCore owns
ReloadConfig.

Lifecycle position: every change goes through here and nowhere else: the model config
(startup, gRPC HandleReloadConfigRequest, the config file watcher, admin "reload config"),
discovery's versions on disk (its aspired-versions callback), admin pin / unpin / load /
unload, and model sync's finished passes (sync writes directories; ServerCore then has
discovery look at them). ServerCore updates the registry and schedules the manager; the
manager publishes each version state change on the StateEventBus, and every wait here
(startup, reloads) is a ServableStateMonitor.wait_until on those events, never a timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from app.core.errors import Code, ServingError, StartupError
from app.core.state_events import (
    AspiredVersionsEvent,
    ModelsConfiguredEvent,
    ServableStateMonitor,
    StateEventBus,
)
from app.core.types import VersionState
from app.lifecycle.discovery import Discovery
from app.lifecycle.manager import VersionManager, initial_load_error
from app.lifecycle.registry import ModelRecord, Registry
from app.lifecycle.state_file import StateFile
from app.lifecycle.traffic_rules import TrafficRules
from app.settings import model_config
from app.settings.model_config import ModelConfig
from app.settings.settings import SettingsError
from app.traffic.live_rule import LiveRule
from app.traffic.router import TrafficRouter
from app.traffic.rules import TrafficRule

log = logging.getLogger("tfgate.server_core")


# Model sync sits above lifecycle/ (its passes read the base paths discovery reads), so
# ServerCore names what it uses of it instead of importing it.


class SyncedModel(Protocol):  # sync.sync_pass.SyncConfig
    @property
    def model(self) -> str: ...


class SyncPassOutcome(Protocol):  # sync.sync_pass.PassResult
    @property
    def model(self) -> str: ...

    @property
    def cancelled(self) -> bool: ...


class ModelSyncer(Protocol):  # sync.loop.ModelSync
    configs: Mapping[str, Any]  # model name -> its sync config
    on_pass: Callable[[Any], None] | None  # called with a SyncPassOutcome

    async def update(self, configs: list[Any]) -> None: ...

    async def sync_now(self, name: str, wait_seconds: float) -> None: ...


# base paths by model name -> the synced models among them (sync.config.load_sync_configs
# over tfgate.toml's [models.NAME.sync] tables); raises SettingsError for a bad table
SyncConfigsFor = Callable[[Mapping[str, str]], list[Any]]


class ServerCore:
    """Owns the registry's configuration, aspired versions and admin overrides."""

    def __init__(
        self,
        registry: Registry,
        manager: VersionManager,
        events: StateEventBus,
        *,
        file_system_poll_wait_seconds: float,
        model_config_file: str = "",
    ) -> None:
        self.registry = registry
        self.manager = manager
        self.events = events
        self.monitor = ServableStateMonitor(events)
        self.discovery = Discovery(registry, self.aspire_versions, file_system_poll_wait_seconds)
        self.model_config_file = model_config_file
        self.model_sync: ModelSyncer | None = None
        self._sync_configs_for_paths: SyncConfigsFor | None = None
        # gRPC HandleReloadConfigRequest, the config file watcher and admin all reload configs.
        self._reload_lock = asyncio.Lock()
        # models added by a reload and not AVAILABLE yet: every reload listing one waits for it
        self._awaited: set[str] = set()
        # Synced models whose base_path a reload changed while a version served: the old
        # base path's versions keep serving until the new one holds a version to load.
        self._moving: dict[str, str] = {}
        # Traffic rules (attach_traffic): the live rules, and who changes and persists them.
        self.traffic: TrafficRouter | None = None
        self._traffic_rules: TrafficRules | None = None

    # --- startup ---

    def configure_initial(self, configs: list[ModelConfig]) -> None:
        """The model config the server starts with (nothing loaded yet)."""
        self.registry.configure(configs)
        self._publish_configured()

    def attach_model_sync(self, model_sync: ModelSyncer, configs_for: SyncConfigsFor) -> None:
        """Model sync is configured: `configs_for` reads which models a config syncs."""
        self.model_sync = model_sync
        self._sync_configs_for_paths = configs_for
        model_sync.on_pass = self.sync_passed

    async def wait_for_initial_models(self) -> None:
        """Until every configured model has an AVAILABLE version; StartupError on a failed
        load. A model with no version on disk yet is waited for indefinitely, as TF Serving
        does (discovery's poll finds it; each of its state changes wakes this wait)."""
        registry = self.registry

        def settled() -> bool:
            # Every aspired version of every model has had its first load attempt (a pinned
            # older version too, not only the first one up); a version waiting to retry a
            # failed load does not hold up the start.
            if initial_load_error(registry) is not None:
                return True
            configured = [m for n, m in registry.models.items() if n not in registry.dropped]
            return registry.all_available() and not any(map(_first_load_pending, configured))

        await self.monitor.wait_until(settled, None)
        error = initial_load_error(registry)
        if error is not None:
            raise StartupError(error.message)

    # --- readiness ---

    def available_versions(self) -> dict[str, list[int]]:
        """AVAILABLE versions of every configured model, as the state events reported them."""
        return {
            name: self.monitor.available_versions(name)
            for name in self.registry.models
            if name not in self.registry.dropped
        }

    def all_available(self) -> bool:
        """Every configured model has an AVAILABLE version (readiness)."""
        available = self.available_versions()
        return bool(available) and all(available.values())

    # --- discovery: the one way in for versions ---

    def aspire_versions(self, name: str, on_disk: dict[int, str], replaced: set[int]) -> None:
        """Discovery's callback: what is on disk under `name`'s base path now."""
        model = self.registry.models[name]
        if name in self._moving:
            if not self.registry.aspired_among(name, on_disk):
                # Nothing to serve from the new base path yet (its sync has not delivered):
                # the old base path's versions keep serving instead of an outage.
                return
            old_base_path = self._moving.pop(name)
            # The same version numbers under the new base path are new copies: reload
            # them from there (in place, the old copies serving meanwhile).
            replaced = replaced | {
                v for v, path in on_disk.items()
                if v in model.versions and model.versions[v].path != path
            }
            log.info(
                "Model %s: versions under %s replace those under %s",
                name,
                model.config.base_path,
                old_base_path,
            )
        self.registry.set_aspired_versions(name, on_disk, replaced=replaced)
        self.manager.reconcile(name)
        self.events.publish(AspiredVersionsEvent(name))

    def scan(self, names: list[str] | None = None) -> None:
        """Have discovery look at base paths now (None: every configured model)."""
        self.discovery.scan(names)

    # --- model config: load and reload ---

    async def reload_config_file(self, wait_seconds: float | None = None) -> None:
        """Admin 'reload config': re-read --model_config_file now; then as
        reload_model_config."""
        if not self.model_config_file:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                "The server was not started with --model_config_file; nothing to reload",
            )
        try:
            configs = model_config.load_model_server_config(self.model_config_file)
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
        # Those not AVAILABLE now are waited for until their loads are done, retries too.
        loading = self._unavailable(awaited)
        if not await self.monitor.wait_until(
            lambda: self._settled(awaited, loading), wait_seconds
        ):
            waiting = self._unavailable(awaited)
            raise ServingError(
                Code.DEADLINE_EXCEEDED,
                f"The model config was applied, but model(s) {', '.join(waiting)} have no "
                f"available version after {wait_seconds:g} s (is there a version directory "
                "under the base path?); they load when one appears",
            )
        self._raise_if_failed(awaited)

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
        self._note_base_path_moves(configs, sync_configs)
        dropped = self.registry.configure(configs)
        self._publish_configured()
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

    def _note_base_path_moves(
        self, configs: list[ModelConfig], sync_configs: list[SyncedModel] | None
    ) -> None:
        """Remember the synced models whose base_path this config changes while one of
        their versions serves (see aspire_versions); forget those no longer moving."""
        synced = {c.model for c in sync_configs or ()}
        for config in configs:
            current = self.registry.configured(config.name)
            if current is None or config.name not in synced:
                self._moving.pop(config.name, None)
            elif current.config.base_path != config.base_path and current.available_versions():
                self._moving.setdefault(config.name, current.config.base_path)
                log.info(
                    "Model %s: base path changes to %s; the versions under %s serve until "
                    "its sync delivers a version there",
                    config.name,
                    config.base_path,
                    current.config.base_path,
                )
        for name in set(self._moving) - {c.name for c in configs}:
            del self._moving[name]

    def _publish_configured(self) -> None:
        self.events.publish(
            ModelsConfiguredEvent(frozenset(set(self.registry.models) - self.registry.dropped))
        )

    def _unavailable(self, names: list[str]) -> list[str]:
        """Those of `names` still configured (a later reload may have removed one) that
        have no AVAILABLE version."""
        return [
            name for name in names
            if (record := self.registry.configured(name)) is not None
            and not record.available_versions()
        ]

    def _settled(self, names: list[str], loading: list[str]) -> bool:
        """No model of `loading` still configured has a load in progress, and each model
        of `names` is AVAILABLE or removed, or one that is not failed to load."""
        configured = [m for n in loading if (m := self.registry.configured(n)) is not None]
        if any(map(_load_pending, configured)):
            return False
        waiting = self._unavailable(names)
        return not waiting or initial_load_error(self.registry, waiting) is not None

    def _raise_if_failed(self, names: list[str]) -> None:
        """After the wait: TF Serving's error if a load failed, ABORTED if a later reload
        removed one of `names`."""
        waiting = self._unavailable(names)
        if waiting:
            self._awaited -= set(waiting)  # failed: later reloads need not wait for it
            error = initial_load_error(self.registry, waiting)
            assert error is not None  # _settled holds
            raise error
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

    def _sync_configs_for(self, configs: list[ModelConfig]) -> list[SyncedModel] | None:
        """The model sync set for a new model config (None when sync is not configured)."""
        if self._sync_configs_for_paths is None:
            return None
        try:
            return self._sync_configs_for_paths({c.name: c.base_path for c in configs})
        except SettingsError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None

    # --- admin overrides of the version policy ---

    def pin(self, model: ModelRecord, version: int) -> None:
        """Serve `version` to requests naming no version or label, and keep it loaded.
        Refused while the model has a traffic rule (both would decide the same requests)."""
        if self.traffic is not None and model.name in self.traffic.rules:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f"Model {model.name} has a traffic rule; delete it before pinning a version",
            )
        model.pinned = version
        model.excluded.discard(version)
        self._retry_failed(model, version)
        self._apply(model)

    def unpin(self, model: ModelRecord) -> None:
        model.pinned = None
        self._apply(model)

    def restore_pin(self, model: ModelRecord, version: int | None, *, excluded: int | None) -> None:
        """Undo a pin that did not take: back to `version` (the last pin that loaded, or
        None), with `excluded` (the version the pin had un-excluded) excluded again."""
        model.pinned = version
        if version is not None:
            model.excluded.discard(version)
        if excluded is not None and excluded != version:
            model.excluded.add(excluded)
        self._apply(model)

    def load_version(self, model: ModelRecord, version: int) -> None:
        """Keep `version` loaded whatever the policy says (retrying it if it failed)."""
        model.excluded.discard(version)
        model.forced.add(version)
        self._retry_failed(model, version)
        self._apply(model)

    def revert_load(self, model: ModelRecord, version: int, *, excluded: bool) -> None:
        """Undo a load_version that did not take; `excluded`: the version was excluded
        before, and is again."""
        model.forced.discard(version)
        if excluded:
            model.excluded.add(version)
        self._apply(model)

    def unload_version(self, model: ModelRecord, version: int) -> None:
        """Keep `version` unloaded whatever the policy says."""
        model.forced.discard(version)
        model.excluded.add(version)
        self._apply(model)

    def _apply(self, model: ModelRecord) -> None:
        self.registry.recompute_aspired(model.name)
        self.manager.reconcile(model.name)
        # wakes the admin waits this change replaces
        self.events.publish(AspiredVersionsEvent(model.name))

    @staticmethod
    def _retry_failed(model: ModelRecord, version: int) -> None:
        """An explicit request for a version that failed to load tries it afresh."""
        record = model.versions.get(version)
        if record is not None and record.state is VersionState.END and record.error:
            del model.versions[version]

    # --- traffic rules (lifecycle/traffic_rules.py keeps and persists them) ---

    def attach_traffic(
        self, router: TrafficRouter, state_file: StateFile, toml_rules: dict[str, TrafficRule]
    ) -> None:
        """Traffic rules are served by `router`, persisted in `state_file`'s "traffic"
        section; `toml_rules` are the [models.NAME.traffic] tables."""
        self.traffic = router
        self._traffic_rules = TrafficRules(self.registry, router, state_file, toml_rules)

    def restore_traffic(self) -> None:
        """At startup, after the pins (TrafficRules.restore)."""
        if self._traffic_rules is not None:
            self._traffic_rules.restore()

    def set_traffic(self, name: str, rule: TrafficRule) -> LiveRule:
        """Replace a model's traffic rule; refused while the model is pinned."""
        return self._traffic_owner().set(name, rule)

    def delete_traffic(self, name: str) -> None:
        self._traffic_owner().delete(name)

    def _traffic_owner(self) -> TrafficRules:
        if self._traffic_rules is None:
            raise ServingError(Code.UNAVAILABLE, "Traffic rules are not enabled")
        return self._traffic_rules

    # --- model sync ---

    def sync_passed(self, result: SyncPassOutcome) -> None:
        """A sync pass finished: what it installed (or deleted) is on disk now, so
        discovery looks at the model's base path at once instead of at its next poll."""
        if result.cancelled or self.registry.configured(result.model) is None:
            return
        self.discovery.scan([result.model])

    async def sync_now(self, name: str, wait_seconds: float) -> None:
        """Run a sync pass for `name` now (admin "sync now"), and return once it finished
        and its versions were handed to discovery."""
        if self.registry.configured(name) is None:
            raise ServingError(Code.NOT_FOUND, f"Model {name} is not configured")
        if self.model_sync is None or name not in self.model_sync.configs:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f"Model {name} is not synced: there is no [models.{name}.sync] table",
            )
        await self.model_sync.sync_now(name, wait_seconds)


def _first_load_pending(model: ModelRecord) -> bool:
    """Whether an aspired version of `model` has not finished its first load attempt."""
    return any(
        r.aspired
        and not r.error
        and (
            r.state is VersionState.START
            or (r.state is VersionState.LOADING and r.load_attempts == 0)
        )
        for r in model.versions.values()
    )


def _load_pending(model: ModelRecord) -> bool:
    """Whether a version of `model` is loading or about to (aspired, not yet tried)."""
    return any(
        r.aspired
        and (r.state is VersionState.LOADING or (r.state is VersionState.START and not r.error))
        for r in model.versions.values()
    )
