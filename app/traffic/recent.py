"""The arms recent requests were routed to, by request id or routing key, for outcomes that
clients report later (traffic/router.py's `report_outcome`).

Ids the gateway made up itself (core/request_ids.py: a prefix and a counter) go into
`CounterRing`, one slot per counter value in preallocated arrays: remembering one stores a
reference to a route made once per arm, so a routed request leaves no object behind. Keeping
100k request-id strings alive in a dict cost the gateway ~3% of its CPU per request (dnn at
c=64, one-arm rule, 8 alternating runs against no rule), though each insertion is cheap.
Ids the clients chose, and routing keys, go into `RecentTable`.

Data path position: traffic/router.py's `write_records()` remembers every routed request
here, so the write runs once per request on the event loop and must cost next to nothing: two
plain dicts used as generations (a write is one dict store; when the young generation is
full it becomes the old one and the previous old one is dropped whole) instead of an
OrderedDict's store + move_to_end + popitem per request. At least the last `keep` keys are
always remembered and at most twice as many are held.
"""

from __future__ import annotations

import array
from typing import Generic, TypeVar

V = TypeVar("V")


class RecentTable(Generic[V]):
    """A bounded map from recent keys to values; the oldest generation is forgotten."""

    __slots__ = ("_generation_size", "_old", "_young")

    def __init__(self, keep: int) -> None:
        self._generation_size = max(1, keep)
        self._young: dict[str, V] = {}
        self._old: dict[str, V] = {}

    def remember(self, key: str, value: V) -> None:
        young = self._young
        young[key] = value
        if len(young) >= self._generation_size:
            self._old, self._young = young, {}

    def get(self, key: str) -> V | None:
        found = self._young.get(key)
        return found if found is not None else self._old.get(key)

    def __len__(self) -> int:
        """Keys held (a key written in both generations counts twice)."""
        return len(self._young) + len(self._old)


class CounterRing(Generic[V]):
    """Values by the counter of the gateway's own request ids: the last `size` counters (of
    every request the gateway numbered, routed or not) each have a slot."""

    __slots__ = ("_counters", "_size", "_values")

    def __init__(self, size: int) -> None:
        self._size = size
        self._counters = array.array("q", [-1]) * size
        self._values: list[V | None] = [None] * size

    def remember(self, counter: int, value: V) -> None:
        slot = counter % self._size
        self._counters[slot] = counter
        self._values[slot] = value

    def get(self, counter: int) -> V | None:
        slot = counter % self._size
        return self._values[slot] if self._counters[slot] == counter else None
