"""What every request leaves behind once it finished: its outcome and duration for the
observers (request metrics, access logs) and, when a traffic rule routed it, for its arm.

Data path position: serving/service.py wraps each predict / classify / regress in one
RequestObservation; resolve_routed()'s answer goes through `routed_to()` so the rule's arm
(app/traffic/) is known. gRPC's MultiInference, which reports no request metrics, counts on
its arm through ArmRecorder. Event-loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from app.core.errors import Code, ServingError
from app.core.signatures import ServableMetadata
from app.core.types import ServableId
from app.traffic.live_rule import LiveRule
from app.traffic.router import TrafficRouter


class Entrypoint(enum.Enum):
    REST = "REST"
    GRPC = "GRPC"


# observer(model, api, entrypoint, code, seconds): request metrics and access logs
Observer = Callable[[str, str, Entrypoint, Code, float], None]


class Observed(Protocol):
    """What a RequestObservation reports to: serving/service.py's ServingService (or an
    ArmRecorder's arm-only target)."""

    @property
    def observers(self) -> Sequence[Observer]: ...

    @property
    def traffic(self) -> TrafficRouter | None: ...


# resolve_routed()'s answer: the servable, its metadata and the rule's arm (None: no rule)
Resolved = tuple[ServableId, ServableMetadata, tuple[LiveRule, int] | None]

# The longest routing key a transport accepts (it is hashed and kept in the router's bounded
# table of recent requests); REST and gRPC refuse a longer one in their own words.
MAX_ROUTING_KEY_CHARS = 256

NOT_ROUTED = contextlib.nullcontext()


class RequestObservation:
    """One timing per request, shared by the request metrics and the traffic rule's arm
    counters (one clock read at each end, one object). A plain class, not
    @contextmanager: it runs on every request, and a generator-based manager costs several
    times more."""

    __slots__ = (
        "api",
        "entrypoint",
        "id_counter",
        "model",
        "request_id",
        "routed",
        "service",
        "started",
    )

    def __init__(
        self,
        service: Observed,
        model: str,
        api: str,
        entrypoint: Entrypoint,
        request_id: str | None,
        id_counter: int | None,
    ) -> None:
        self.service = service
        self.model = model
        self.api = api
        self.entrypoint = entrypoint
        self.request_id = request_id
        self.id_counter = id_counter
        self.routed: tuple[LiveRule, int] | None = None
        self.started = 0.0

    def __enter__(self) -> RequestObservation:
        self.started = time.perf_counter()
        return self

    def routed_to(self, resolved: Resolved) -> Resolved:
        """resolve_routed()'s answer, passed through; its arm (if any) gets this request."""
        self.routed = resolved[2]
        return resolved

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        elapsed = time.perf_counter() - self.started
        if error is None:
            code = Code.OK
        elif isinstance(error, ServingError):
            code = error.code
        elif isinstance(error, asyncio.CancelledError):
            code = Code.CANCELLED
        else:
            code = Code.INTERNAL  # the transports answer it as an internal error
        for observer in self.service.observers:
            observer(self.model, self.api, self.entrypoint, code, elapsed)
        routed = self.routed
        traffic = self.service.traffic
        # Any failure is an error of the arm (a candidate that rejects requests must show
        # it); a request its client abandoned is not counted on it at all.
        if routed is None or traffic is None or code is Code.CANCELLED:
            return
        traffic.record(
            routed[0],
            routed[1],
            kind is None,
            elapsed,
            self.request_id,
            self.id_counter,
        )


class _ArmOnly(NamedTuple):
    """What an ArmRecorder reports to: the rule's arm, no request metrics."""

    traffic: TrafficRouter
    observers: Sequence[Observer] = ()


class ArmRecorder(RequestObservation):
    """A MultiInference call, counted on its arm like any routed request; it reports no
    request metrics (TF Serving records none for MultiInference)."""

    __slots__ = ()

    def __init__(
        self,
        traffic: TrafficRouter,
        routed: tuple[LiveRule, int],
        request_id: str | None,
    ) -> None:
        super().__init__(_ArmOnly(traffic), "", "", Entrypoint.GRPC, request_id, None)
        self.routed = routed


def shadowed(routed: tuple[LiveRule, int] | None) -> LiveRule | None:
    """The rule that routed a request, when it also sends shadow copies."""
    if routed is not None and routed[0].rule.shadow is not None:
        return routed[0]
    return None
