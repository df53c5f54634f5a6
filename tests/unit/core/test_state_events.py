"""The state event bus and the monitor every lifecycle wait is built on."""

from __future__ import annotations

import asyncio

import pytest

from app.core.errors import Code, ServingError
from app.core.state_events import (
    ModelsConfiguredEvent,
    ServableStateMonitor,
    StateEvent,
    StateEventBus,
    VersionStateEvent,
)
from app.core.types import ServableId, VersionState


def _event(version: int, state: VersionState) -> VersionStateEvent:
    return VersionStateEvent(ServableId("m", version), state)


def test_subscribers_hear_every_event_in_order_and_a_failing_one_stops_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = StateEventBus()
    heard: list[StateEvent] = []

    def broken(event: StateEvent) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(heard.append)
    failed = VersionStateEvent(ServableId("m", 1), VersionState.END, ServingError(Code.UNKNOWN, "x"))
    bus.publish(_event(1, VersionState.LOADING))
    bus.publish(failed)
    assert heard == [_event(1, VersionState.LOADING), failed]
    assert "A state event subscriber failed" in caplog.text
    unsubscribe()
    bus.publish(_event(2, VersionState.LOADING))
    assert len(heard) == 2


async def test_monitor_tracks_versions_until_they_end() -> None:
    bus = StateEventBus()
    monitor = ServableStateMonitor(bus)
    for version in (1, 2):
        bus.publish(_event(version, VersionState.LOADING))
        bus.publish(_event(version, VersionState.AVAILABLE))
    bus.publish(VersionStateEvent(ServableId("other", 7), VersionState.AVAILABLE))
    assert monitor.available_versions("m") == [1, 2]
    bus.publish(_event(1, VersionState.UNLOADING))
    assert monitor.available_versions("m") == [2]
    bus.publish(_event(1, VersionState.END))
    assert ServableId("m", 1) not in monitor.states  # bounded: ended versions are dropped
    assert monitor.available_versions("other") == [7]


async def test_wait_until_wakes_on_the_event_that_makes_it_true() -> None:
    bus = StateEventBus()
    monitor = ServableStateMonitor(bus)
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(
        monitor.wait_until(lambda: monitor.available_versions("m") == [3], 30)
    )
    await asyncio.sleep(0)
    bus.publish(ModelsConfiguredEvent(frozenset({"m"})))  # wakes it; not true yet
    await asyncio.sleep(0)
    assert not waiter.done()
    started = loop.time()
    loop.call_later(0.05, bus.publish, _event(3, VersionState.AVAILABLE))
    assert await waiter is True
    assert loop.time() - started < 1.0  # woken by the event, not by a timer


async def test_wait_until_is_bounded() -> None:
    monitor = ServableStateMonitor(StateEventBus())
    assert await monitor.wait_until(lambda: True, 0) is True
    assert await monitor.wait_until(lambda: False, 0.05) is False
