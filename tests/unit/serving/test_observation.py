"""serving/observation.py: one timing per request for the request metrics and, when a traffic
rule routed it, for the rule's arm; ArmRecorder (MultiInference) for the arm alone."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine

import pytest

from app.core.errors import Code, ServingError
from app.core.request_ids import new_request_id
from app.serving.observation import ArmRecorder, RequestObservation
from app.serving.service import Entrypoint
from app.traffic.router import TrafficRouter
from app.traffic.rules import parse_rule


def _service() -> tuple[types.SimpleNamespace, list[tuple[str, str, Code]]]:
    seen: list[tuple[str, str, Code]] = []
    service = types.SimpleNamespace(
        observers=[lambda model, api, _entry, code, _s: seen.append((model, api, code))],
        traffic=TrafficRouter(),
    )
    service.traffic.set_rule("m", parse_rule({"arms": [{"name": "a", "version": 1}]}))
    return service, seen


def _observe(service: types.SimpleNamespace, request_id: str | None = None,
             id_counter: int | None = None) -> RequestObservation:
    return RequestObservation(
        service, "m", "predict", Entrypoint.REST, request_id, id_counter  # type: ignore[arg-type]
    )


def _abandon(request: Callable[[], Coroutine[None, None, None]]) -> None:
    """Start `request`, then cancel it as a client that went away does."""

    async def scenario() -> None:
        task = asyncio.create_task(request())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_an_unrouted_request_reaches_the_observers_only() -> None:
    service, seen = _service()
    with _observe(service):
        pass
    assert seen == [("m", "predict", Code.OK)]
    service.traffic.write_records()
    assert service.traffic.rules["m"].stats[0].requests == 0


def test_a_routed_request_counts_on_its_arm_under_the_gateways_id_counter() -> None:
    service, seen = _service()
    request_id, counter = new_request_id()
    with _observe(service, request_id, counter) as observed:
        observed.routed_to((None, None, service.traffic.choose("m", None)))  # type: ignore[arg-type]
    with pytest.raises(ServingError), _observe(service) as observed:
        observed.routed_to((None, None, service.traffic.choose("m", None)))  # type: ignore[arg-type]
        raise ServingError(Code.INVALID_ARGUMENT, "bad input")
    service.traffic.write_records()
    stats = service.traffic.rules["m"].stats[0]
    assert (stats.requests, stats.errors, len(stats.recent_latencies_seconds())) == (2, 1, 2)
    assert [code for *_, code in seen] == [Code.OK, Code.INVALID_ARGUMENT]
    # filed under the counter, not the text: nothing kept per id string
    assert len(service.traffic._recent_requests) == 0
    assert service.traffic.report_outcome("m", request_id=request_id, conversion=True)[1] == 0


def test_an_unexpected_failure_is_internal_and_an_error_of_the_arm() -> None:
    service, seen = _service()
    with pytest.raises(KeyError), _observe(service) as observed:
        observed.routed_to((None, None, service.traffic.choose("m", None)))  # type: ignore[arg-type]
        raise KeyError("bug")
    assert seen == [("m", "predict", Code.INTERNAL)]
    service.traffic.write_records()
    assert service.traffic.rules["m"].stats[0].errors == 1


def test_an_abandoned_request_is_cancelled_and_not_counted_on_the_arm() -> None:
    service, seen = _service()

    async def abandoned() -> None:
        with _observe(service) as observed:
            observed.routed_to((None, None, service.traffic.choose("m", None)))  # type: ignore[arg-type]
            await asyncio.sleep(10)

    _abandon(abandoned)
    assert seen == [("m", "predict", Code.CANCELLED)]
    service.traffic.write_records()
    assert service.traffic.rules["m"].stats[0].requests == 0


def _routed() -> tuple[TrafficRouter, tuple]:
    router = TrafficRouter()
    live = router.set_rule("m", parse_rule({"arms": [{"name": "a", "version": 1}]}))
    return router, (live, 0)


def test_arm_recorder_counts_success_and_failure_on_the_arm() -> None:
    router, routed = _routed()
    with ArmRecorder(router, routed, "req-1"):
        pass
    with pytest.raises(ServingError), ArmRecorder(router, routed, None):
        raise ServingError(Code.INVALID_ARGUMENT, "bad input")
    router.write_records()
    stats = routed[0].stats[0]
    assert (stats.requests, stats.errors) == (2, 1)
    assert router.report_outcome("m", request_id="req-1", conversion=True)[1] == 0


def test_arm_recorder_leaves_an_abandoned_request_uncounted() -> None:
    router, routed = _routed()

    async def abandoned() -> None:
        with ArmRecorder(router, routed, None):
            await asyncio.sleep(10)

    _abandon(abandoned)
    router.write_records()
    assert routed[0].stats[0].requests == 0
