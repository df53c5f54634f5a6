"""Typed model-state events and the monitor that waits on them (TF Serving's EventBus and
ServableStateMonitor).

Lifecycle position: the manager publishes a VersionStateEvent on every version state
change, ServerCore a ModelsConfiguredEvent on every applied model config and an
AspiredVersionsEvent whenever a model's aspired versions may have changed; readiness, the
startup wait, reload waits, admin waits and metrics subscribe instead of polling. Event
loop only: publishing is a plain call, and waiters are woken through an asyncio.Event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from app.core.errors import ServingError
from app.core.types import ServableId, VersionState

log = logging.getLogger("tfgate.state_events")


@dataclasses.dataclass(frozen=True)
class VersionStateEvent:
    """One version entered `state` (END with `error` when its load failed)."""

    servable: ServableId
    state: VersionState
    error: ServingError | None = None


@dataclasses.dataclass(frozen=True)
class ModelsConfiguredEvent:
    """A model config was applied: `models` is the set of configured names now."""

    models: frozenset[str]


@dataclasses.dataclass(frozen=True)
class AspiredVersionsEvent:
    """The versions `model` aspires to may have changed (discovery found a change on disk,
    or an admin pin, load or unload); the manager's version state events follow."""

    model: str


StateEvent = VersionStateEvent | ModelsConfiguredEvent | AspiredVersionsEvent
Subscriber = Callable[[StateEvent], None]


class StateEventBus:
    """Synchronous fan-out to subscribers, in subscription order. A failing subscriber is
    logged and never stops the publisher or the other subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns the call that removes it again."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, event: StateEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("A state event subscriber failed on %s", event)


class ServableStateMonitor:
    """Latest state of every version seen on the bus, and `wait_until(predicate)`, which
    re-checks its predicate after every event instead of on a timer."""

    def __init__(self, bus: StateEventBus) -> None:
        self.states: dict[ServableId, VersionStateEvent] = {}
        # Replaced on every event: a waiter holds the one current when it last checked, so
        # an event published between its check and its wait still wakes it.
        self._changed = asyncio.Event()
        bus.subscribe(self._on_event)

    def _on_event(self, event: StateEvent) -> None:
        if isinstance(event, VersionStateEvent):
            # An ENDed version is gone (a later load of it starts afresh): only versions
            # still somewhere between LOADING and UNLOADING are kept, so the map stays bounded.
            if event.state is VersionState.END:
                self.states.pop(event.servable, None)
            else:
                self.states[event.servable] = event
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def available_versions(self, name: str) -> list[int]:
        return sorted(
            s.version
            for s, e in self.states.items()
            if s.model == name and e.state is VersionState.AVAILABLE
        )

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """True as soon as `predicate()` holds (checked now and after every event); False
        once `timeout` seconds passed without it (None: no bound)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            return predicate()
        return True
