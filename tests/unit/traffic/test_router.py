"""TrafficRouter: arm choice, ramp on a fake clock, rollback, outcomes, bounded memory."""

from __future__ import annotations

import asyncio
import random
import types

import ml_dtypes
import numpy as np
import pytest

from app.core.errors import Code, ServingError
from app.traffic import assign
from app.traffic import router as router_module
from app.traffic.recent import RecentTable
from app.traffic.router import TrafficRouter, model_key
from app.traffic.rules import parse_rule
from app.traffic.shadow import ShadowDispatcher, agreement


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _rule(**extra: object):  # type: ignore[no-untyped-def]
    return parse_rule({"arms": [{"name": "base", "version": 1},
                                {"name": "cand", "version": 2}], **extra})


ROLLBACK = {"min_requests": 16, "max_error_rate_increase": 0.1}


def _queue_a_failing_candidate(router: TrafficRouter, live) -> None:  # type: ignore[no-untyped-def]
    """16 good requests on the baseline, 16 failed ones on the candidate, recorded (queued):
    under ROLLBACK, enough to roll the rule back once they are counted."""
    for arm, ok in ((0, True), (1, False)):
        for _ in range(16):
            router.record(live, arm, ok, 0.01, None, None)


def _fail_the_candidate(router: TrafficRouter, live) -> None:  # type: ignore[no-untyped-def]
    """The same, counted (as any reader of the rule would count them first)."""
    _queue_a_failing_candidate(router, live)
    router.write_records()


def _key_on_arm(router: TrafficRouter, model: str, arm: int) -> str:
    """The first routing key the model's rule sends to `arm` (choose() has routed it once)."""
    return next(f"user-{i}" for i in range(1000) if router.choose(model, f"user-{i}")[1] == arm)  # type: ignore[index]


def test_no_rule_means_no_choice() -> None:
    assert TrafficRouter().choose("m", "key") is None


def test_ramp_follows_the_clock_and_rollback_sticks() -> None:
    clock = Clock()
    router = TrafficRouter(clock)
    rolled: list[str] = []
    router.rollback_observers.append(lambda live: rolled.append(live.model))
    live = router.set_rule("m", _rule(
        ramp={"candidate": "cand", "steps_percent": [0, 100], "step_seconds": 10},
        rollback=ROLLBACK,
    ))
    assert {router.choose("m", f"k{i}")[1] for i in range(50)} == {0}  # type: ignore[index]
    clock.now += 10
    assert {router.choose("m", f"k{i}")[1] for i in range(50)} == {1}  # type: ignore[index]
    _fail_the_candidate(router, live)
    assert live.rolled_back and rolled == ["m"]
    assert live.rollback_reason is not None and live.rollback_reason.startswith("arm cand")
    assert {router.choose("m", f"k{i}")[1] for i in range(50)} == {0}  # type: ignore[index]
    described = router.describe("m")
    assert described["state"]["rolled_back"] is True
    assert [a["weight"] for a in described["arms"]] == [1.0, 0.0]
    assert described["arms"][1]["stats"]["errors"] == 16


def test_recorded_requests_are_counted_in_writes_of_a_bounded_queue() -> None:
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule())
    for _ in range(router_module.RECORDS_PER_WRITE - 1):
        router.record(live, 0, True, 0.001, None, None)
    assert live.stats[0].requests == 0  # queued: the request path only appends
    router.record(live, 0, True, 0.001, None, None)
    assert live.stats[0].requests == router_module.RECORDS_PER_WRITE
    assert not router._unwritten


def test_every_reader_counts_the_queued_requests_first() -> None:
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule(rollback=ROLLBACK))
    router.record(live, 1, True, 0.001, "queued-id", None)
    assert router.report_outcome("m", request_id="queued-id", conversion=True)[1] == 1
    router.record(live, 1, True, 0.001, None, None)
    assert router.describe("m")["arms"][1]["stats"]["requests"] == 2
    router.record(live, 1, True, 0.001, None, None)
    rows = dict(router.metric_rows())
    assert rows[("m", "cand", "2")]["requests"] == 3
    # a rollback the queued requests call for is decided before a reader answers
    for reader in (router.summary, router.persisted):
        live = router.set_rule("m", _rule(id=reader.__name__, rollback=ROLLBACK))
        _queue_a_failing_candidate(router, live)
        assert reader("m")["rolled_back"] is True  # type: ignore[index]


def test_outcomes_by_request_id_and_key_and_bounded_memory(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(router_module, "RECENT_REQUESTS", 4)
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule())
    for i in range(10):
        router.record(live, i % 2, ok=True, seconds=0.001, request_id=f"r{i}",
                      id_counter=None)
    assert len(router._recent_requests) <= 2 * 4  # the oldest generation forgotten
    with pytest.raises(ServingError) as gone:
        router.report_outcome("m", request_id="r0", conversion=True)
    assert gone.value.code is Code.NOT_FOUND
    _, arm = router.report_outcome("m", request_id="r5", conversion=True)
    assert arm == 1 and live.stats[1].conversions == 1
    _, arm = router.report_outcome("m", routing_key="anyone", reward=2.5)
    assert live.stats[arm].reward_count == 1
    for bad in ({}, {"request_id": "r5", "routing_key": "k", "conversion": True},
                {"request_id": "r5"}, {"request_id": "r5", "conversion": True, "reward": 1.0}):
        with pytest.raises(ServingError) as invalid:
            router.report_outcome("m", **bad)  # type: ignore[arg-type]
        assert invalid.value.code is Code.INVALID_ARGUMENT
    # a replaced rule: the request id's outcome is refused, not miscounted
    router.set_rule("m", _rule(id="other"))
    with pytest.raises(ServingError) as replaced:
        router.report_outcome("m", request_id="r5", conversion=True)
    assert replaced.value.code is Code.FAILED_PRECONDITION


def test_a_changed_rule_keeps_the_counts_of_unchanged_arms() -> None:
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule())
    router.record(live, 0, ok=True, seconds=0.001, request_id=None, id_counter=None)
    router.record(live, 1, ok=True, seconds=0.001, request_id=None, id_counter=None)
    changed = router.set_rule("m", parse_rule({"arms": [
        {"name": "base", "version": 1, "weight": 3}, {"name": "cand", "version": 3}]}))
    assert changed.stats[0].requests == 1 and changed.stats[1].requests == 0
    # the old rule object keeps counting what it routed: no request is lost
    router.record(live, 1, ok=True, seconds=0.001, request_id=None, id_counter=None)
    router.write_records()
    assert live.stats[1].requests == 2


def test_bandit_moves_weight_to_the_converting_arm() -> None:
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule(bandit=True, seed=1))
    for i in range(200):
        router.report_outcome("m", routing_key=f"u{i}", conversion=False)
    for i in range(200):
        live.stats[1].add_conversion(True)
        router.report_outcome("m", routing_key=f"v{i}", conversion=live.rng.random() < 0.01)
    weights = live.weights(0)
    assert weights[1] > 0.9


def test_shadow_agreement_and_dispatcher_bound() -> None:
    a = {"scores": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32), "name": np.array([b"x"])}
    b = {"scores": np.array([[0.2, 0.8], [0.1, 0.9]], np.float32)}
    max_diff, agree, rows = agreement(a, b)
    assert max_diff == pytest.approx(0.7)
    assert (agree, rows) == (1, 2)
    assert agreement(a, {"scores": np.zeros((3, 2), np.float32)})[0] == float("inf")

    async def scenario() -> tuple[int, int, bool]:
        dispatcher = ShadowDispatcher(max_pending=2)
        assert not dispatcher.offer(_noop)  # not started: dropped
        dispatcher.start()
        release = asyncio.Event()
        ran = []

        async def job() -> None:
            ran.append(1)
            await release.wait()

        results = [dispatcher.offer(job) for _ in range(5)]
        await asyncio.sleep(0)
        later = dispatcher.offer(job, max_pending=1)
        release.set()
        await asyncio.sleep(0.01)
        await dispatcher.close()
        return results.count(True), len(ran), later

    accepted, ran, later = asyncio.run(scenario())
    # one job running, one waiting: a rule allowing 1 pending drops the next copy
    assert accepted == 2 and ran >= 2 and later is False


def test_shadow_agreement_compares_bfloat16_outputs() -> None:
    bf16 = ml_dtypes.bfloat16
    a = {"scores": np.array([[0.25, 0.75], [0.5, 0.5]], bf16)}
    b = {"scores": np.array([[0.5, 0.5], [0.5, 0.5]], bf16)}
    assert agreement(a, b) == (0.25, 1, 2)


async def _noop() -> None:
    return None


def test_a_seeded_rule_draws_the_same_arms_in_every_router() -> None:
    rule = _rule(seed=7)
    draws = []
    for _ in range(2):
        router = TrafficRouter(Clock())
        router.set_rule("m", rule)
        draws.append([router.choose("m", None)[1] for _ in range(200)])  # type: ignore[index]
    assert draws[0] == draws[1]
    assert 60 < draws[0].count(1) < 140  # and both arms drawn, by weight


def test_weights_in_force_follow_rollback_and_bandit_refresh() -> None:
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule(seed=1))
    assert {router.choose("m", None)[1] for _ in range(100)} == {0, 1}  # type: ignore[index]
    live.rolled_back = True  # the cached table must not outlive the change
    assert {router.choose("m", None)[1] for _ in range(100)} == {0}  # type: ignore[index]
    live.rolled_back = False
    live.stats[0].conversion_trials, live.stats[0].conversions = 500, 0
    live.stats[1].conversion_trials, live.stats[1].conversions = 500, 500
    live.refresh_bandit()  # Thompson now puts ~99% on arm 1
    assert [router.choose("m", None)[1] for _ in range(200)].count(1) > 180  # type: ignore[index]


def test_outcomes_by_the_gateways_own_request_ids(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Ids the gateway made up are remembered by their counter (no dict entry per request):
    an outcome finds its arm until OWN_ID_SLOTS newer ids took the slot."""
    from app.core.request_ids import new_request_id

    monkeypatch.setattr(router_module, "OWN_ID_SLOTS", 4)
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule())
    made = [new_request_id() for _ in range(6)]
    ids = [text for text, _ in made]
    for i, (request_id, counter) in enumerate(made):
        router.record(live, i % 2, ok=True, seconds=0.001, request_id=request_id,
                      id_counter=counter)
    assert len(router._recent_requests) == 0  # nothing kept per id
    _, arm = router.report_outcome("m", request_id=ids[5], conversion=True)
    assert arm == 1 and live.stats[1].conversions == 1
    with pytest.raises(ServingError) as gone:
        router.report_outcome("m", request_id=ids[0], conversion=True)
    assert gone.value.code is Code.NOT_FOUND
    router.set_rule("m", _rule(id="replaced"))
    with pytest.raises(ServingError) as replaced:
        router.report_outcome("m", request_id=ids[4], conversion=True)
    assert replaced.value.code is Code.FAILED_PRECONDITION


def test_a_client_sent_id_shaped_like_ours_is_found_by_its_text() -> None:
    """A client may send back an id the gateway made up (a retry): record() files it by its
    text, and an outcome naming it still finds the arm."""
    from app.core.request_ids import new_request_id

    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule())
    echoed, _ = new_request_id()
    router.record(live, 1, ok=True, seconds=0.001, request_id=echoed, id_counter=None)
    assert router.report_outcome("m", request_id=echoed, conversion=True)[1] == 1


@pytest.mark.parametrize("weights", [[0.3, 0.0, 0.7], [1e-12, 1.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
def test_choose_draws_exactly_what_arm_in_gives(weights: list[float]) -> None:
    """choose() inlines assign.arm_in's search: the same arm for every draw, boundaries, 0 and
    the largest draw below 1 included."""
    router = TrafficRouter(Clock())
    arms = [{"name": f"a{i}", "version": i + 1, "weight": w} for i, w in enumerate(weights)]
    live = router.set_rule("m", parse_rule({"arms": arms}))
    cumulative = assign.cumulative_weights(weights)
    total = cumulative[-1]
    points = [0.0, 1.0 - 2**-53, *(c / total for c in cumulative),
              *(random.Random(7).random() for _ in range(2000))]
    for point in points:
        live.rng = types.SimpleNamespace(random=lambda point=point: point)  # type: ignore[assignment]
        assert router.choose("m", None) == (live, assign.arm_in(point, cumulative))


def test_a_keys_remembered_arm_follows_every_weight_change() -> None:
    """choose() keeps each routing key's arm while the weights stay; a ramp step, a rollback
    and a bandit refresh each move the key to where it hashes under the new weights."""
    clock = Clock()
    router = TrafficRouter(clock)
    live = router.set_rule("m", _rule(
        ramp={"candidate": "cand", "steps_percent": [0, 100], "step_seconds": 10},
    ))
    keys = [f"user-{i}" for i in range(50)]

    def arms() -> list[int]:
        return [router.choose("m", key)[1] for key in keys]  # type: ignore[index]

    assert arms() == [0] * 50 and live.key_arms == {}  # a ramp's weights move: nothing kept
    clock.now += 10
    assert arms() == [1] * 50
    live.rolled_back = True
    assert arms() == [0] * 50 and len(live.key_arms) == 50
    # a fixed 50/50 rule: the kept arm is the one the key hashes to
    split = router.set_rule("m", _rule(id="fixed"))
    expected = [assign.arm_for_key(split.rule_id, key, [1.0, 1.0]) for key in keys]
    assert arms() == expected == arms() and len(split.key_arms) == 50
    assert 0 < sum(expected) < 50
    split.stats[0].conversion_trials, split.stats[0].conversions = 500, 0
    split.stats[1].conversion_trials, split.stats[1].conversions = 500, 500
    split.refresh_bandit()  # ~99% on arm 1 now
    assert split.key_arms == {}
    assert sum(arms()) > 40


def test_the_kept_key_arms_are_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(router_module, "KEY_ARMS_KEPT", 8)
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule())
    for i in range(100):
        router.choose("m", f"user-{i}")
        assert len(live.key_arms) <= 8


def test_a_keys_outcome_counts_for_the_arm_that_served_it_across_a_weight_change() -> None:
    """choose() remembers a key's arm when it works it out afresh, not on every request; an
    outcome after a weight change (here a rollback) still goes to the arm that served."""
    router = TrafficRouter(Clock())
    live = router.set_rule("m", _rule(rollback=ROLLBACK))
    stores: list[str] = []

    class CountedTable(RecentTable):  # type: ignore[type-arg]
        def remember(self, key: str, value: object) -> None:
            stores.append(key)
            super().remember(key, value)

    router._recent_keys = CountedTable(100)
    key = _key_on_arm(router, "m", 1)
    assert stores[-1] == model_key("m", key)  # its first request worked the arm out
    stores.clear()
    for _ in range(100):
        assert router.choose("m", key)[1] == 1  # type: ignore[index]
    assert stores == []  # the kept arm: nothing stored per request
    _fail_the_candidate(router, live)
    assert live.rolled_back  # the weights are now base 1, cand 0
    _, arm = router.report_outcome("m", routing_key=key, conversion=True)
    assert arm == 1 and live.stats[1].conversions == 1  # the arm that served it
    assert router.choose("m", key)[1] == 0  # type: ignore[index]
    assert stores == [model_key("m", key)]  # worked out afresh under the new weights
    _, arm = router.report_outcome("m", routing_key=key, conversion=True)
    assert arm == 0


def test_a_key_sent_to_two_models_keeps_an_arm_for_each() -> None:
    router = TrafficRouter(Clock())
    live_a = router.set_rule("a", _rule(rollback=ROLLBACK))
    router.set_rule("b", _rule())
    key = _key_on_arm(router, "a", 1)
    router.choose("b", key)  # the same user, another model: remembered apart
    _fail_the_candidate(router, live_a)
    assert live_a.rolled_back  # model a's key now hashes to arm 0
    _, arm = router.report_outcome("a", routing_key=key, conversion=True)
    assert arm == 1  # the arm of model a that served the key
