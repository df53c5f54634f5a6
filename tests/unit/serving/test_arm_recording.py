"""serving/service.py's per-arm recording: success, failure, and an abandoned request."""

from __future__ import annotations

import asyncio

import pytest

from app.core.errors import Code, ServingError
from app.serving.arm_recording import ArmRecorder
from app.traffic.router import TrafficRouter
from app.traffic.rules import parse_rule


def _routed() -> tuple[TrafficRouter, tuple]:
    router = TrafficRouter()
    live = router.set_rule("m", parse_rule({"arms": [{"name": "a", "version": 1}]}))
    return router, (live, 0)


def test_success_and_failure_are_counted_on_the_arm() -> None:
    router, routed = _routed()
    with ArmRecorder(router, routed, "key", "req-1"):
        pass
    with pytest.raises(ServingError), ArmRecorder(router, routed, None, None):
        raise ServingError(Code.INVALID_ARGUMENT, "bad input")
    stats = routed[0].stats[0]
    assert (stats.requests, stats.errors) == (2, 1)
    assert router.report_outcome("m", request_id="req-1", conversion=True)[1] == 0


def test_an_abandoned_request_is_not_counted() -> None:
    router, routed = _routed()

    async def abandoned() -> None:
        with ArmRecorder(router, routed, None, None):
            await asyncio.sleep(10)

    async def scenario() -> None:
        task = asyncio.create_task(abandoned())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert routed[0].stats[0].requests == 0
