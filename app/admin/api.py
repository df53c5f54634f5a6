"""Admin operations: list models, pin / unpin a version, load / unload a version, reload
the model config, sync a model now; bearer-token auth; pins persisted in a state file.

Transport-neutral: the REST routes (rest/admin_routes.py) and the gRPC AdminService
(rpc/admin.py) both call `AdminApi`. Lifecycle position: admin -> ServerCore (pin, load,
unload, reload, sync now), the one owner of model state; versions still only enter through
the registry's aspired set, and discovery's view of the disk stays the source of truth.
What stays here is the request around a change: validation, the answer's JSON, waiting for
the outcome (on the state events) and the pins' state file (admin/pin_state.py), which is
written only once a pin's version loaded and undone when it does not. Its bearer tokens are
admin/tokens.py's.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from app.admin.pin_state import PinState
from app.core.errors import Code, ServingError
from app.core.types import VersionState
from app.lifecycle.registry import ModelRecord
from app.lifecycle.server_core import ServerCore
from app.settings.config_file import ADMIN_LOAD_WAIT_SECONDS
from app.traffic.router import TrafficRouter
from app.traffic.rules import parse_rule

log = logging.getLogger("tfgate.admin")

# How long a pin, an explicit load or a config reload waits for its versions to become
# AVAILABLE by default ([admin] load_wait_seconds).
LOAD_WAIT_SECONDS = ADMIN_LOAD_WAIT_SECONDS


class AdminApi:
    def __init__(
        self,
        core: ServerCore,
        state: PinState,
        describe_extras: Callable[[str], dict[str, Any]] | None = None,
        load_wait_seconds: float = LOAD_WAIT_SECONDS,
    ) -> None:
        self.core = core
        self.registry = core.registry  # read only: every change is a call on `core`
        self.state = state
        self.load_wait_seconds = load_wait_seconds
        # extra per-model fields from other components (sync status, cache hit ratio)
        self.describe_extras = describe_extras or (lambda name: {})
        self._lock = asyncio.Lock()
        self._settling: set[asyncio.Task[ServingError | None]] = set()
        # The pins in the state file: each pin once its version loaded (a pin still waiting
        # is only in its model's record), and those of models not configured at startup.
        self._saved_pins: dict[str, int] = {}

    def add_describe_extras(self, extras: Callable[[str], dict[str, Any]]) -> None:
        """Compose another component's per-model fields with those already registered
        (model sync, cache, ...): each adds its own keys, none replaces another's."""
        previous = self.describe_extras
        self.describe_extras = lambda name: {**previous(name), **extras(name)}

    # --- startup ---

    def restore_pins(self) -> None:
        """Apply persisted pins before the initial load, so a pinned version loads too."""
        self._saved_pins = self.state.load()
        for name, version in self._saved_pins.items():
            model = self.registry.models.get(name)
            if model is None:
                # Kept in the file: a later start may configure the model again.
                log.warning("Persisted pin of model %s not applied: the model is not "
                            "configured", name)
                continue
            self.core.pin(model, version)
            log.info("Restored pin of model %s to version %d", name, version)

    # --- queries ---

    def list_models(self) -> dict[str, Any]:
        return {"models": [self.describe(name) for name in sorted(self.registry.models)]}

    def describe(self, name: str) -> dict[str, Any]:
        model = self._model(name)
        available = model.available_versions()
        serving = (
            model.pinned if model.pinned in available else (available[-1] if available else None)
        )
        versions = [
            {
                "version": r.version,
                "state": r.state.name,
                "error": None
                if r.error is None
                else {"code": r.error.code.name, "message": r.error.message},
                "on_disk": r.version in model.on_disk,
                "in_flight_requests": r.in_flight,
            }
            for r in sorted(model.versions.values(), key=lambda r: r.version)
        ]
        return {
            "name": name,
            "base_path": model.config.base_path,
            "policy": model.config.policy.describe(),
            "labels": dict(sorted(model.labels.items())),
            "pinned_version": model.pinned,
            "serving_version": serving,
            "versions_on_disk": sorted(model.on_disk),
            "forced_versions": sorted(model.forced),
            "excluded_versions": sorted(model.excluded),
            "versions": versions,
            "removed_from_config": name in self.registry.dropped,
            "traffic": self.core.traffic.summary(name) if self.core.traffic else None,
            **self.describe_extras(name),
        }

    def _model(self, name: str) -> ModelRecord:
        model = self.registry.models.get(name)
        if model is None:
            raise ServingError(Code.NOT_FOUND, f"Model {name} is not configured")
        return model

    def _configured(self, name: str, version: int) -> ModelRecord:
        """The model a change may touch: listed by the current config (one removed by a
        reload but not yet unloaded is only described), with a valid version number."""
        if version < 0:
            raise ServingError(
                Code.INVALID_ARGUMENT, f"Version must be a non-negative integer, got {version}"
            )
        model = self.registry.configured(name)
        if model is None:
            raise ServingError(Code.NOT_FOUND, f"Model {name} is not configured")
        return model

    def _in_force(self, model: ModelRecord) -> bool:
        """Whether `model` is still the config's record of its name (a reload may have
        removed it while a change waited)."""
        return self.registry.configured(model.name) is model

    def _require_on_disk(self, model: ModelRecord, version: int) -> None:
        self.core.scan([model.name])
        if version not in model.on_disk:
            raise ServingError(
                Code.NOT_FOUND,
                f"Version {version} of model {model.name} is not on disk under "
                f"{model.config.base_path}",
            )

    # --- changes ---

    async def pin(self, name: str, version: int) -> dict[str, Any]:
        async with self._lock:
            model = self._configured(name, version)
            self._require_on_disk(model, version)
            # A pin that could not be persisted would silently vanish at the next restart:
            # find out before changing anything that the state file can be written.
            self._save_pins(self._saved_pins)
            was_excluded = version in model.excluded
            self.core.pin(model, version)
        error = await self._settle(
            model,
            version,
            still_wanted=lambda: model.pinned == version,
            undo=lambda: self._undo_pin(model, version, was_excluded),
            commit=lambda: self._commit_pin(name, version),
        )
        if error is not None:
            raise _admin_error(error, f"Cannot pin model {name} to version {version}")
        log.info("Pinned model %s to version %d", name, version)
        return self.describe(name)

    async def unpin(self, name: str) -> dict[str, Any]:
        async with self._lock:
            model = self.registry.configured(name)
            if model is None and name not in self._saved_pins:
                raise ServingError(Code.NOT_FOUND, f"Model {name} is not configured")
            saved = {n: v for n, v in self._saved_pins.items() if n != name}
            self._save_pins(saved)
            self._saved_pins = saved
            if model is None:  # a persisted pin of a model this server does not serve
                log.info("Removed the persisted pin of unconfigured model %s", name)
                return {"name": name, "pinned_version": None}
            self.core.unpin(model)
            log.info("Unpinned model %s; the version policy decides again", name)
            return self.describe(name)

    async def load_version(self, name: str, version: int) -> dict[str, Any]:
        async with self._lock:
            model = self._configured(name, version)
            self._require_on_disk(model, version)
            was_excluded = version in model.excluded
            self.core.load_version(model, version)
        error = await self._settle(
            model,
            version,
            still_wanted=lambda: version in model.forced,
            undo=lambda: self.core.revert_load(model, version, excluded=was_excluded),
        )
        if error is not None:
            raise _admin_error(error, f"Version {version} of model {name} did not load")
        return self.describe(name)

    async def unload_version(self, name: str, version: int) -> dict[str, Any]:
        async with self._lock:
            model = self._configured(name, version)
            # The saved pin too: a pin still waiting for its version falls back to it.
            if version in (model.pinned, self._saved_pins.get(name)):
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Version {version} of model {name} is pinned; unpin it first",
                )
            live = self.core.traffic.rules.get(name) if self.core.traffic else None
            if live is not None and (
                any(arm.version == version for arm in live.arms)
                or (live.rule.shadow is not None and live.rule.shadow.version == version)
            ):
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Version {version} of model {name} is served by its traffic rule; "
                    "change or delete the rule first",
                )
            self.core.scan([name])
            if version not in model.on_disk and version not in model.versions:
                # Excluding a version nobody has seen would hide it for good once published.
                raise ServingError(
                    Code.NOT_FOUND,
                    f"Version {version} of model {name} is neither loaded nor on disk under "
                    f"{model.config.base_path}",
                )
            self.core.unload_version(model, version)
        # The unload is in force either way; the answer waits for it, within the bound.
        await self.core.monitor.wait_until(
            lambda: _unloaded(model, version), self.load_wait_seconds
        )
        return self.describe(name)

    async def reload_config(self) -> dict[str, Any]:
        # Not under the admin lock: ServerCore's reload lock orders config changes, and a
        # new model that takes long to appear must not hold up pins of the others.
        await self.core.reload_config_file(self.load_wait_seconds)
        return self.list_models()

    async def sync_now(self, name: str) -> dict[str, Any]:
        """Run the model's sync pass now; answers once it finished (its outcome is in the
        model's `sync` status) and discovery has seen what it installed."""
        await self.core.sync_now(name, self.load_wait_seconds)
        return self.describe(name)

    # --- traffic rules ---

    def get_traffic(self, name: str) -> dict[str, Any]:
        """The model's rule, its state and per-arm statistics (404 without a rule)."""
        self._model(name)
        return self._traffic().describe(name)

    async def set_traffic(self, name: str, body: Any) -> dict[str, Any]:
        """Replace the model's traffic rule with `body` (the rule's JSON)."""
        try:
            rule = parse_rule(body)
        except ValueError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, f"Invalid traffic rule: {exc}") from None
        async with self._lock:  # ordered with pins: the exclusivity check sees them settled
            self.core.set_traffic(name, rule)
        return self._traffic().describe(name)

    async def delete_traffic(self, name: str) -> dict[str, Any]:
        async with self._lock:
            self.core.delete_traffic(name)
        return self.describe(name)

    def report_outcome(self, name: str, body: Any) -> dict[str, Any]:
        """An outcome for a request id or routing key: {"request_id" | "routing_key",
        "conversion": bool | "reward": number}."""
        if not isinstance(body, dict):
            raise ServingError(Code.INVALID_ARGUMENT, _OUTCOME_SHAPE)
        unknown = sorted(set(body) - {"request_id", "routing_key", "conversion", "reward"})
        request_id, routing_key = body.get("request_id"), body.get("routing_key")
        conversion, reward = body.get("conversion"), body.get("reward")
        if (
            unknown
            or not isinstance(request_id, str | None)
            or not isinstance(routing_key, str | None)
            or not isinstance(conversion, bool | None)
            or (reward is not None and (isinstance(reward, bool)
                                        or not isinstance(reward, int | float)
                                        or not math.isfinite(reward)))
        ):
            raise ServingError(Code.INVALID_ARGUMENT, _OUTCOME_SHAPE)
        live, arm = self._traffic().report_outcome(
            name,
            request_id=request_id,
            routing_key=routing_key,
            conversion=conversion,
            reward=None if reward is None else float(reward),
        )
        return {"model": name, "arm": live.names[arm], "recorded": True}

    def _traffic(self) -> TrafficRouter:
        if self.core.traffic is None:
            raise ServingError(Code.UNAVAILABLE, "Traffic rules are not enabled")
        return self.core.traffic

    async def close(self) -> None:
        """Stop the outcomes still being waited for (at shutdown)."""
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)

    async def _settle(
        self,
        model: ModelRecord,
        version: int,
        still_wanted: Callable[[], bool],
        undo: Callable[[], None],
        commit: Callable[[], ServingError | None] = lambda: None,
    ) -> ServingError | None:
        """Wait until `version` is AVAILABLE, then `commit` (None, or an error after which
        the request is undone), or until it failed (its error; `undo` runs). Both run under
        the admin lock and only while the request is still in force.

        The wait runs in its own task and the caller only watches it: a client that
        disconnects or whose deadline passes does not stop it, so the outcome is the same
        whether or not anyone is still waiting for the answer.
        """

        def wanted() -> bool:
            return self._in_force(model) and still_wanted()

        async def settle() -> ServingError | None:
            error = await self._wait_loaded(model, version, wanted)
            if error is not None and error.code is Code.ABORTED:
                return error
            async with self._lock:
                if not wanted():
                    return _replaced()
                if error is None:
                    error = commit()
                if error is not None:
                    undo()
            return error

        task = asyncio.create_task(settle(), name=f"admin-settle-{model.name}-{version}")
        self._settling.add(task)
        task.add_done_callback(self._settled)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # the caller was cancelled; the task goes on
            raise ServingError(Code.UNAVAILABLE, "The server is shutting down") from None

    def _settled(self, task: asyncio.Task[ServingError | None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Admin change failed while waiting for its version",
                      exc_info=task.exception())

    def _commit_pin(self, name: str, version: int) -> ServingError | None:
        saved = {**self._saved_pins, name: version}
        try:
            self._save_pins(saved)
        except ServingError as exc:
            return exc
        self._saved_pins = saved
        return None

    def _undo_pin(self, model: ModelRecord, version: int, was_excluded: bool) -> None:
        """Back to the pin in the state file (the last one that loaded), or none, and to
        the version's exclusion as it was."""
        self.core.restore_pin(
            model,
            self._saved_pins.get(model.name),
            excluded=version if was_excluded else None,
        )

    async def _wait_loaded(
        self, model: ModelRecord, version: int, still_wanted: Callable[[], bool]
    ) -> ServingError | None:
        """None once `version` is AVAILABLE; its error if it failed; ABORTED once a later
        admin change replaced the request; DEADLINE_EXCEEDED after load_wait_seconds.
        Re-checked on every state event (a replacing change publishes one too)."""

        def outcome() -> ServingError | None:
            if not still_wanted():
                return _replaced()
            record = model.versions.get(version)
            if record is not None and record.state is VersionState.AVAILABLE:
                return None
            if record is not None and record.state is VersionState.END and record.error:
                # Whatever the load's own code (UNAVAILABLE for a worker that died...), a
                # failed load is the request's failed precondition.
                return ServingError(
                    Code.FAILED_PRECONDITION, f"it failed to load: {record.error.message}"
                )
            return _PENDING

        if await self.core.monitor.wait_until(
            lambda: outcome() is not _PENDING, self.load_wait_seconds
        ):
            return outcome()
        return ServingError(
            Code.DEADLINE_EXCEEDED,
            f"it was not available after {self.load_wait_seconds:g} s; the request was undone",
        )

    def _save_pins(self, pins: dict[str, int]) -> None:
        try:
            self.state.save(pins)
        except OSError as exc:
            raise ServingError(
                Code.UNAVAILABLE,
                f"Cannot write the admin state file {self.state.path}: "
                f"{exc.strerror or exc}; nothing was changed",
            ) from None


_OUTCOME_SHAPE = (
    'An outcome is {"request_id": ID or "routing_key": KEY, "conversion": true|false or '
    '"reward": NUMBER}'
)

# _wait_loaded's "no outcome yet"
_PENDING = ServingError(Code.UNKNOWN, "pending")


def _unloaded(model: ModelRecord, version: int) -> bool:
    """Whether `version` is down: never loaded, failed, or unloaded."""
    record = model.versions.get(version)
    return record is None or record.state in (VersionState.START, VersionState.END)


def _replaced() -> ServingError:
    return ServingError(
        Code.ABORTED,
        "a later admin change or config reload replaced this request before it loaded",
    )


def _admin_error(error: ServingError, what: str) -> ServingError:
    """A failed pin or load as the admin API reports it, with the code _settle gave it:
    FAILED_PRECONDITION (the load failed), ABORTED (replaced), DEADLINE_EXCEEDED (still
    loading after the wait) or UNAVAILABLE (the state file cannot be written)."""
    return ServingError(error.code, f"{what}: {error.message}")
