"""The arms recent requests were routed to, by request id or routing key, for outcomes that
clients report later (traffic/router.py's `report_outcome`).

Data path position: traffic/router.py's `record()` remembers every routed request here, so
the write runs once per request on the event loop and must cost next to nothing: two
plain dicts used as generations (a write is one dict store; when the young generation is
full it becomes the old one and the previous old one is dropped whole) instead of an
OrderedDict's store + move_to_end + popitem per request. At least the last `keep` keys are
always remembered and at most twice as many are held.
"""

from __future__ import annotations

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
