"""Executes version transitions: load, reload, unload servables on the worker pool.

Lifecycle position: ServerCore -> registry (aspired versions) -> manager.reconcile(name) ->
worker_pool.load/unload; every state change is published on the StateEventBus. One
reconcile loop per model at a time: it asks the registry's pure planner for the next action
until there is none (availability preserving: a new version is AVAILABLE before the old one
unloads). Failed loads are retried
max_num_load_retries times; an unloading version first waits for its in-flight requests
(woken by the registry's release of the last one, not by a timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable

from app.core.errors import Code, ServingError
from app.core.signatures import ServableMetadata
from app.core.state_events import StateEventBus, VersionStateEvent
from app.core.types import ServableId, VersionState
from app.lifecycle.fingerprint import version_fingerprint
from app.lifecycle.registry import Action, ModelRecord, Registry, VersionRecord, plan_next_action
from app.runtime.pool import LoadSpec, WorkerPool

log = logging.getLogger("tfgate.manager")

# How long an unload waits for in-flight requests before it unloads anyway.
DRAIN_TIMEOUT_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    tags: tuple[str, ...] = ("serve",)
    enable_warmup: bool = True
    warmup_iterations: int = 0
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0


class VersionManager:
    def __init__(
        self,
        registry: Registry,
        pool: WorkerPool,
        options: LoadOptions,
        events: StateEventBus,
        before_load: Callable[[ServableId, str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.options = options
        self.events = events
        # load_observers(version_path, ok): once per load attempt, retries and in-place
        # reloads included (TF's load_attempt_count)
        self.load_observers: list[Callable[[str, bool], None]] = []
        # Reads what a version brings besides its SavedModel (batching_policy's
        # batching_params.pbtxt); a ServingError from it fails the load.
        self.before_load = before_load
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()

    def reconcile(self, name: str) -> None:
        """Schedule a reconcile of one model (coalesced while one is running)."""
        self._dirty.add(name)
        task = self._tasks.get(name)
        if task is None or task.done():
            self._tasks[name] = asyncio.create_task(
                self._reconcile_loop(name), name=f"manager-{name}"
            )

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _reconcile_loop(self, name: str) -> None:
        while name in self._dirty:
            self._dirty.discard(name)
            while True:
                model = self.registry.models.get(name)
                if model is None:
                    break
                action = plan_next_action(model)
                if action is None:
                    break
                try:
                    await self._execute(model, action)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s of %s version %d failed", action.kind, name, action.version)
                    await asyncio.sleep(1.0)
            model = self.registry.models.get(name)
            if model is not None:
                self.registry.apply_labels(name)
                self._forget_dropped(model)

    def _forget_dropped(self, model: ModelRecord) -> None:
        """A model removed from the config is forgotten once nothing of it is loaded."""
        if model.name in self.registry.dropped and all(
            r.state is VersionState.END for r in model.versions.values()
        ):
            self.registry.forget(model.name)

    async def _execute(self, model: ModelRecord, action: Action) -> None:
        if action.kind == "unload":
            await self._unload(model, action.version)
        else:
            await self._load(model, action.version, replace=action.kind == "reload")

    def _set_state(
        self, model: ModelRecord, version: int, state: VersionState, error: ServingError | None
    ) -> None:
        record = model.versions[version]
        record.state = state
        record.error = error
        # Labels follow availability before anyone hears of it: a waiter woken by this
        # event may answer requests by label at once.
        self.registry.apply_labels(model.name)
        self.events.publish(VersionStateEvent(ServableId(model.name, version), state, error))

    async def _load(self, model: ModelRecord, version: int, *, replace: bool) -> None:
        record = model.versions[version]
        servable = ServableId(model.name, version)
        if not replace:
            self._set_state(model, version, VersionState.LOADING, None)
        spec = LoadSpec(
            path=record.path,
            tags=self.options.tags,
            enable_warmup=self.options.enable_warmup,
            warmup_iterations=self.options.warmup_iterations,
            replace=replace,
        )
        attempts = self.options.max_num_load_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                if self.before_load is not None:
                    self.before_load(servable, record.path)
                # Read before the load: requests answered by the old copy meanwhile must
                # not be cached under the new files' digest.
                fingerprint = await asyncio.to_thread(version_fingerprint, record.path)
                data = await self._attempt(record.path, self.pool.load(servable, spec))
                record.fingerprint = fingerprint
                record.metadata = ServableMetadata.from_bytes(data)
                record.needs_reload = False
                self._set_state(model, version, VersionState.AVAILABLE, None)
                log.info("Successfully loaded servable version %s", servable)
                return
            except ServingError as exc:
                record.load_attempts = attempt
                if replace:
                    log.error(
                        "Reloading %s failed; the loaded copy keeps serving: %s",
                        servable,
                        exc.message,
                    )
                    record.needs_reload = False
                    return
                if attempt == attempts or not record.aspired:
                    log.error("Loading servable %s failed: %s", servable, exc.message)
                    self._set_state(model, version, VersionState.END, exc)
                    return
                log.warning(
                    "Loading servable %s failed (attempt %d of %d), retrying in %.1fs: %s",
                    servable,
                    attempt,
                    attempts,
                    self.options.load_retry_interval_seconds,
                    exc.message,
                )
                await asyncio.sleep(self.options.load_retry_interval_seconds)

    async def _attempt(self, path: str, load: Awaitable[bytes]) -> bytes:
        """One load attempt, reported to the load observers (a cancelled one is not)."""
        try:
            data = await load
        except ServingError:
            for observer in self.load_observers:
                observer(path, False)
            raise
        for observer in self.load_observers:
            observer(path, True)
        return data

    async def _unload(self, model: ModelRecord, version: int) -> None:
        record = model.versions[version]
        servable = ServableId(model.name, version)
        self._set_state(model, version, VersionState.UNLOADING, None)
        if record.in_flight > 0:
            record.drained = asyncio.Event()  # set by Registry.release for the last request
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                    await record.drained.wait()
            record.drained = None
        await self.pool.unload(servable)
        record.metadata = None
        self._set_state(model, version, VersionState.END, None)
        log.info("Unloaded servable version %s", servable)
        if record.aspired:
            # aspired again while it was unloading (a pin, a rollback): load it afresh
            model.versions[version] = VersionRecord(version, record.path)


def initial_load_error(
    registry: Registry, names: Iterable[str] | None = None
) -> ServingError | None:
    """TF Serving's startup failure text when a model's load failed (of `names`, default
    every configured model) and it has no AVAILABLE version."""
    failed = []
    wanted = registry.models if names is None else {n: registry.models[n] for n in names}
    for model in wanted.values():
        if model.available_versions():
            continue
        for record in model.versions.values():
            if record.error is not None and record.aspired:
                failed.append(
                    f"{{name: {model.name} version: {record.version}}} due to error: "
                    f"{record.error.message}"
                )
    if not failed:
        return None
    return ServingError(
        Code.UNKNOWN,
        f"{len(failed)} servable(s) did not become available: {{{', '.join(failed)}}}",
    )
