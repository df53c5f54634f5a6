"""Traffic-rule bookkeeping on the request path: serving/service.py's resolve step picked an
arm (app/traffic/); this counts the request's outcome and latency on that arm and says when
the rule also wants a shadow copy. Event-loop only."""

from __future__ import annotations

import asyncio
import contextlib
import time

from app.traffic.router import LiveRule, TrafficRouter

# The longest routing key a transport accepts (it is hashed and kept in the router's bounded
# table of recent requests); REST and gRPC refuse a longer one in their own words.
MAX_ROUTING_KEY_CHARS = 256

NOT_ROUTED = contextlib.nullcontext()


class ArmRecorder:
    """Count a routed request's outcome and latency on its arm (any failure is an error of
    the arm: a candidate that rejects requests must show it; a request its client abandoned
    is not counted at all). A plain class, not @contextmanager: it runs on every routed
    request, and a generator-based manager costs several times more."""

    __slots__ = ("request_id", "routed", "routing_key", "started", "traffic")

    def __init__(
        self,
        traffic: TrafficRouter,
        routed: tuple[LiveRule, int],
        routing_key: str | None,
        request_id: str | None,
    ) -> None:
        self.traffic = traffic
        self.routed = routed
        self.routing_key = routing_key
        self.request_id = request_id
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            return
        self.traffic.record(
            self.routed[0],
            self.routed[1],
            ok=kind is None,
            seconds=time.perf_counter() - self.started,
            request_id=self.request_id,
            routing_key=self.routing_key,
        )


def shadowed(routed: tuple[LiveRule, int] | None) -> LiveRule | None:
    """The rule that routed a request, when it also sends shadow copies."""
    if routed is not None and routed[0].rule.shadow is not None:
        return routed[0]
    return None
