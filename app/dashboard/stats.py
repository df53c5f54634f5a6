"""What the dashboard's stats endpoint answers: the load sampler's window plus read-only views
of the worker processes, the result cache and the server, passed in by main.py as callables
(the dashboard sees none of those components, only what they describe).

Off the data path: read on each stats request, never writes anything.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from app.dashboard.sampler import LoadSampler


@dataclasses.dataclass
class DashboardSources:
    """The live state the stats endpoint shows. `workers`: runtime's WorkerPool
    .describe_workers; `cache`: ResultCache.overview, None without a cache; `draining`:
    whether the server is shutting down."""

    sampler: LoadSampler
    workers: Callable[[], list[dict[str, Any]]]
    draining: Callable[[], bool]
    cache: Callable[[], dict[str, Any]] | None = None
    started_at: float = dataclasses.field(default_factory=time.time)

    def stats(self, since: float | None = None) -> dict[str, Any]:
        return {
            "server_time": round(time.time(), 3),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "draining": self.draining(),
            "load": self.sampler.series(since),
            "workers": self.workers(),
            "cache": self.cache() if self.cache is not None else None,
        }
