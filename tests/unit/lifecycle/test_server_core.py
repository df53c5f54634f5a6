"""ServerCore, the one owner of model state, with a real registry, manager, discovery and
model sync (file:// source) over an in-process stand-in for the worker pool."""

from __future__ import annotations

import asyncio
import functools
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.admin.api import AdminApi
from app.admin.pin_state import PinState
from app.core.errors import Code, ServingError
from app.core.state_events import StateEvent, StateEventBus, VersionStateEvent
from app.core.types import ModelSpec, ServableId, VersionState
from app.lifecycle.manager import LoadOptions, VersionManager
from app.lifecycle.registry import Registry
from app.lifecycle.server_core import ServerCore
from app.runtime.pool import LoadSpec
from app.settings.config_file import ConfigFile
from app.settings.model_config import ModelConfig
from app.sync.config import load_sync_configs
from app.sync.loop import ModelSync
from app.sync.manifest import publish
from app.sync.storage import SourceOptions

WAIT_SECONDS = 30.0


class Pool:
    """Loads in-process: records what is loaded from where; `gate` holds loads back."""

    def __init__(self) -> None:
        self.loaded: dict[ServableId, str] = {}
        self.failing: set[ServableId] = set()
        self.gate = asyncio.Event()
        self.gate.set()

    async def load(self, servable: ServableId, spec: LoadSpec) -> bytes:
        await self.gate.wait()
        if servable in self.failing:
            raise ServingError(Code.INVALID_ARGUMENT, "no such SavedModel")
        self.loaded[servable] = spec.path
        return b""  # an empty MetaGraphDef: no signatures

    async def unload(self, servable: ServableId) -> None:
        self.loaded.pop(servable, None)


class Harness:
    def __init__(self, tmp: pathlib.Path, sync_tables: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.registry = Registry()
        self.events = StateEventBus()
        self.heard: list[StateEvent] = []
        self.events.subscribe(self.heard.append)
        self.pool = Pool()
        self.manager = VersionManager(
            self.registry, self.pool, LoadOptions(max_num_load_retries=0), self.events  # type: ignore[arg-type]
        )
        # poll 0: discovery never polls; only ServerCore's own scans find versions
        self.core = ServerCore(
            self.registry,
            self.manager,
            self.events,
            file_system_poll_wait_seconds=0,
        )
        self.sync: ModelSync | None = None
        if sync_tables is not None:
            self.sync = ModelSync([])
            self.core.attach_model_sync(
                self.sync, functools.partial(load_sync_configs, sync_tables)
            )
            self.sync.start()

    def version(self, base: str, version: int) -> pathlib.Path:
        path = self.tmp / base / str(version)
        path.mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"model %d of %s" % (version, base.encode()))
        return path

    def config(self, name: str, base: str) -> ModelConfig:
        return ModelConfig(name, str(self.tmp / base))

    def serving(self, name: str) -> int:
        return self.registry.resolve(ModelSpec(name, None, None, ""))[0].version

    async def close(self) -> None:
        if self.sync is not None:
            await self.sync.close()
        await self.manager.close()


@pytest.fixture
async def harness(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    await h.close()


async def test_a_reload_answers_on_the_state_event_that_makes_its_model_available(
    harness: Harness,
) -> None:
    harness.version("a", 1)
    harness.core.configure_initial([harness.config("a", "a")])
    harness.core.scan()
    async with asyncio.timeout(WAIT_SECONDS):
        await harness.core.wait_for_initial_models()
    assert harness.core.all_available() and harness.serving("a") == 1
    reload = asyncio.create_task(
        harness.core.reload_model_config(
            [harness.config("a", "a"), harness.config("b", "b")], WAIT_SECONDS
        )
    )
    await asyncio.sleep(0.05)
    assert not reload.done()  # b has no version yet
    assert harness.core.available_versions() == {"a": [1], "b": []}
    harness.version("b", 4)
    harness.core.scan(["b"])
    async with asyncio.timeout(WAIT_SECONDS):
        await reload
    assert harness.serving("b") == 4
    assert VersionStateEvent(ServableId("b", 4), VersionState.AVAILABLE) in harness.heard


async def test_reload_outcomes_failed_removed_and_timed_out(harness: Harness) -> None:
    harness.version("bad", 1)
    harness.pool.failing.add(ServableId("bad", 1))
    with pytest.raises(ServingError) as failed:
        await harness.core.reload_model_config([harness.config("bad", "bad")], WAIT_SECONDS)
    assert failed.value.message == (
        "1 servable(s) did not become available: {{name: bad version: 1} due to error: "
        "no such SavedModel}"
    )
    waiting = asyncio.create_task(
        harness.core.reload_model_config([harness.config("late", "late")], WAIT_SECONDS)
    )
    await asyncio.sleep(0.05)
    await harness.core.reload_model_config([], WAIT_SECONDS)  # removes `late`
    with pytest.raises(ServingError) as removed:
        async with asyncio.timeout(WAIT_SECONDS):
            await waiting
    assert removed.value.code is Code.ABORTED
    with pytest.raises(ServingError) as timed_out:
        await harness.core.reload_model_config([harness.config("late", "late")], 0.05)
    assert timed_out.value.code is Code.DEADLINE_EXCEEDED


async def test_an_unload_waits_for_the_last_request_in_flight(harness: Harness) -> None:
    for version in (1, 2):
        harness.version("m", version)
    harness.core.configure_initial([harness.config("m", "m")])
    harness.core.scan()
    admin = AdminApi(harness.core, PinState(None), load_wait_seconds=WAIT_SECONDS)
    pinned = await admin.pin("m", 1)
    assert pinned["pinned_version"] == 1 and pinned["serving_version"] == 1
    await admin.unpin("m")
    servable = ServableId("m", 1)
    harness.registry.acquire(servable)  # a request in flight on version 1
    unload = asyncio.create_task(admin.unload_version("m", 1))
    await asyncio.sleep(0.05)
    assert not unload.done()
    assert harness.registry.models["m"].versions[1].state is VersionState.UNLOADING
    assert servable in harness.pool.loaded
    harness.registry.release(servable)
    async with asyncio.timeout(WAIT_SECONDS):
        described = await unload
    assert servable not in harness.pool.loaded
    assert {v["version"]: v["state"] for v in described["versions"]}[1] == "END"


def _sync_tables(remote: pathlib.Path) -> dict[str, Any]:
    # a pass per hour: any pass sooner than that was started by ServerCore or admin
    document = {"models": {"s": {"sync": {"source": f"file://{remote}", "poll_seconds": 3600}}}}
    return ConfigFile.parse(document, "tfgate.toml").sync_tables()


def _publish(local: pathlib.Path, remote: pathlib.Path, version: int) -> None:
    source = SourceOptions(f"file://{remote}")
    publish(str(local), f"{source.url}/{version}", source)


async def test_a_reload_that_adds_a_synced_model_syncs_and_loads_it_at_once(
    tmp_path: pathlib.Path,
) -> None:
    """Discovery never polls here (poll 0): the version loads because the sync pass the
    reload started tells ServerCore, which scans the base path."""
    remote = tmp_path / "remote"
    harness = Harness(tmp_path, _sync_tables(remote))
    try:
        _publish(harness.version("staging", 1), remote, 1)
        harness.version("a", 1)
        harness.core.configure_initial([harness.config("a", "a")])
        harness.core.scan()
        await harness.core.reload_model_config(
            [harness.config("a", "a"), harness.config("s", "s")], WAIT_SECONDS
        )
        assert (tmp_path / "s" / "1" / "saved_model.pb").is_file()
        assert harness.serving("s") == 1
        # admin "sync now": a version published later arrives without waiting an hour
        _publish(harness.version("staging", 2), remote, 2)
        admin = AdminApi(harness.core, PinState(None), load_wait_seconds=WAIT_SECONDS)
        admin.add_describe_extras(harness.sync.describe)  # type: ignore[union-attr]
        described = await admin.sync_now("s")
        assert described["versions_on_disk"] == [1, 2]
        assert described["sync"]["versions_synced"] == [1, 2]
        async with asyncio.timeout(WAIT_SECONDS):
            await harness.core.monitor.wait_until(lambda: harness.serving("s") == 2, None)
        with pytest.raises(ServingError) as unsynced:
            await admin.sync_now("a")
        assert unsynced.value.code is Code.FAILED_PRECONDITION
        assert unsynced.value.message == (
            "Model a is not synced: there is no [models.a.sync] table"
        )
        with pytest.raises(ServingError) as unknown:
            await admin.sync_now("nope")
        assert unknown.value.code is Code.NOT_FOUND
    finally:
        await harness.close()


async def test_a_synced_model_keeps_serving_while_its_new_base_path_fills(
    tmp_path: pathlib.Path,
) -> None:
    """base_path change of a synced model: the old copy serves until the new base path
    holds a version, which then replaces it in place; no request finds nothing."""
    remote = tmp_path / "remote"
    harness = Harness(tmp_path, _sync_tables(remote))
    try:
        _publish(harness.version("staging", 1), remote, 1)
        await harness.core.reload_model_config([harness.config("s", "old")], WAIT_SECONDS)
        assert harness.pool.loaded == {ServableId("s", 1): str(tmp_path / "old" / "1")}
        outages: list[str] = []
        harness.events.subscribe(
            lambda event: harness.core.all_available() or outages.append(str(event))
        )
        hidden = tmp_path / "remote-hidden"
        remote.rename(hidden)  # the store has nothing (yet) for the new base path
        await harness.core.reload_model_config([harness.config("s", "new")], WAIT_SECONDS)
        await harness.core.sync_now("s", WAIT_SECONDS)  # a pass that finds nothing
        assert not [p for p in (tmp_path / "new").iterdir() if p.name.isdigit()]
        assert harness.serving("s") == 1  # still the old base path's copy
        assert harness.pool.loaded == {ServableId("s", 1): str(tmp_path / "old" / "1")}
        hidden.rename(remote)
        await harness.core.sync_now("s", WAIT_SECONDS)  # delivers version 1 under `new`
        async with asyncio.timeout(WAIT_SECONDS):
            await harness.core.monitor.wait_until(
                lambda: harness.pool.loaded.get(ServableId("s", 1)) == str(tmp_path / "new" / "1"),
                None,
            )
        assert harness.serving("s") == 1
        assert outages == []
        assert harness.registry.models["s"].versions[1].path == str(tmp_path / "new" / "1")
    finally:
        await harness.close()


async def test_the_start_waits_until_every_aspired_version_had_its_load(harness: Harness) -> None:
    """A restored pin of an older version: the start waits for it too, not only for the
    newest version, which the manager loads first."""
    for version in (1, 2):
        harness.version("m", version)
    harness.core.configure_initial([harness.config("m", "m")])
    harness.core.pin(harness.registry.models["m"], 1)
    start = asyncio.create_task(harness.core.wait_for_initial_models())
    await asyncio.sleep(0.05)
    assert not start.done()  # nothing on disk was looked at yet
    harness.core.scan()
    async with asyncio.timeout(WAIT_SECONDS):
        await start
    assert set(harness.pool.loaded) == {ServableId("m", 1), ServableId("m", 2)}
    assert harness.serving("m") == 1
