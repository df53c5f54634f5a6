"""The live traffic rules of every model: arm choice per request, per-arm counters, ramp
and rollback, outcomes by request id or routing key, and the rules' JSON for the admin API.

Data path position: serving/service.py's resolve step calls `choose()` for a request that
names no version or label (a dict lookup when the model has no rule), then `record()` once
the request finished (queued; `write_records()` counts the queue on the arms). Lifecycle
position: rules change only through lifecycle's ServerCore (`set_rule` / `delete_rule`),
which also persists them. Event-loop only.

A request keeps the LiveRule (traffic/live_rule.py: one rule in force, its weights and
counters) it was routed by: a rule change never drops it; its counts go to the rule it ran
under.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from app.core.errors import Code, ServingError
from app.core.request_ids import own_counter
from app.traffic import assign
from app.traffic.arms import LATENCY_SLOT_MASK, summarize
from app.traffic.live_rule import LiveRule
from app.traffic.recent import CounterRing, RecentTable
from app.traffic.rules import TrafficRule
from app.traffic.shadow import ShadowDispatcher, agreement

log = logging.getLogger("tfgate.traffic")

# Recent request ids (and, apart, routing keys) -> the arm that served them, for outcomes
# reported later: bounded, the oldest forgotten first (traffic/recent.py). Ids the clients
# chose: at least the last RECENT_REQUESTS routed ones; ids the gateway made up: the last
# OWN_ID_SLOTS it numbered (every REST request it answered, routed or not).
RECENT_REQUESTS = 100_000
OWN_ID_SLOTS = 1 << 18
KEY_ARMS_KEPT = 65_536  # routing keys whose arm a rule keeps (all forgotten when full)
ROLLBACK_CHECK_EVERY = 16  # requests between rollback checks (a check sorts latencies)
# Finished routed requests are queued and counted on their arms this many at a time: one
# request's counting, timed inside the server under load, took 2.0 us when each request
# wrote its own (the arm's counters, ring slots and the id table are cold again by the next
# request) against ~0.4 us in a tight loop; written together they stay warm. A rollback is
# decided up to this many requests later, and every reader writes the queue first.
RECORDS_PER_WRITE = 64
BANDIT_REFRESH_OUTCOMES = 20  # outcomes between Thompson re-draws of the weights


def model_key(model: str, routing_key: str) -> str:
    """A routing key as the table of recent keys files it: per model (the name, a NUL, the
    key), so one user's key sent to two models with rules keeps an arm for each."""
    return f"{model}\0{routing_key}"


class TrafficRouter:
    """Every model's live rule. Changes come from ServerCore only."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.rules: dict[str, LiveRule] = {}
        self.clock = clock
        self._recent_requests: RecentTable[tuple[LiveRule, int]] = RecentTable(RECENT_REQUESTS)
        self._recent_own_ids: CounterRing[tuple[LiveRule, int]] = CounterRing(OWN_ID_SLOTS)
        self._recent_keys: RecentTable[tuple[LiveRule, int]] = RecentTable(RECENT_REQUESTS)
        self.shadow = ShadowDispatcher()
        # record()'s queue: (live, arm, ok, seconds, request_id, id_counter)
        self._unwritten: list[tuple[LiveRule, int, bool, float, str | None, int | None]] = []
        # on_rollback(live): the rule's state changed by itself (ServerCore persists it;
        # metrics count it)
        self.rollback_observers: list[Callable[[LiveRule], None]] = []

    # --- changes (ServerCore) ---

    def set_rule(
        self,
        model: str,
        rule: TrafficRule,
        *,
        started_at: float | None = None,
        rolled_back: bool = False,
        rollback_reason: str | None = None,
    ) -> LiveRule:
        live = LiveRule(
            model,
            rule,
            started_at=self.clock() if started_at is None else started_at,
            rolled_back=rolled_back,
            rollback_reason=rollback_reason,
        )
        self.write_records()  # the replaced rule's requests are decided under it
        previous = self.rules.get(model)
        if previous is not None and previous.rule_id == live.rule_id:
            # The same experiment, changed: arms that still point where they did keep
            # their counts and outcomes.
            for index, arm in enumerate(live.arms):
                if arm.name in previous.names:
                    old = previous.names.index(arm.name)
                    if previous.target(old) == live.target(index):
                        live.stats[index] = previous.stats[old]
        self.rules[model] = live
        return live

    def delete_rule(self, model: str) -> LiveRule | None:
        return self.rules.pop(model, None)

    def persisted(self, model: str) -> dict[str, Any] | None:
        """What the state file keeps of a model's rule: the rule, when its ramp started,
        whether it was rolled back and why."""
        self.write_records()
        live = self.rules.get(model)
        if live is None:
            return None
        return {
            "rule": live.rule.document(),
            "started_at": live.started_at,
            "rolled_back": live.rolled_back,
            "rollback_reason": live.rollback_reason,
        }

    # --- request path ---

    def choose(self, model: str, routing_key: str | None) -> tuple[LiveRule, int] | None:
        """The arm for a request that names no version or label; None without a rule."""
        live = self.rules.get(model)
        if live is None:
            return None
        cumulative = live.cumulative or live.cumulative_weights(self.clock)
        if routing_key:  # where the key hashes (sticky)
            arm = live.key_arms.get(routing_key)
            if arm is not None:
                return live.routes[arm]
            arm = assign.arm_in(assign.key_point(live.rule_id, routing_key), cumulative)
            if live.cumulative is not None:  # weights fixed until weights_changed()
                if len(live.key_arms) >= KEY_ARMS_KEPT:
                    live.key_arms = {}
                live.key_arms[routing_key] = arm
            # Remembered for outcomes only when the arm is worked out afresh: while the rule
            # keeps the key's arm, that arm is also where the key hashes now, which is
            # report_outcome's fallback; a weight change forgets the kept arms, so the key's
            # next request is remembered again. The request path skips one store per request.
            route = live.routes[arm]
            self._recent_keys.remember(model_key(model, routing_key), route)
            return route
        # a seeded or random draw: assign.arm_in's search inline (it runs per routed request);
        # rounding at the top and an all-zero table go through arm_in itself
        point = live.rng.random()
        arm = bisect.bisect_right(cumulative, point * cumulative[-1])
        if arm >= len(cumulative):
            arm = assign.arm_in(point, cumulative)
        return live.routes[arm]

    def record(
        self,
        live: LiveRule,
        arm: int,
        ok: bool,
        seconds: float,
        request_id: str | None,
        id_counter: int | None,
    ) -> None:
        """A finished request of arm `arm` (`id_counter`: its id's counter when the gateway
        made the id up); routing keys are remembered by choose(). Positional: it runs once
        per routed request, and only queues the request: write_records() counts it."""
        unwritten = self._unwritten
        unwritten.append((live, arm, ok, seconds, request_id, id_counter))
        if len(unwritten) >= RECORDS_PER_WRITE:
            self.write_records()

    def write_records(self) -> None:
        """Count the queued requests on their arms (requests, errors, latency ring), file
        their arms under their ids for outcomes, and check rollbacks. Everything that reads
        the counters, the rollback state or the ids calls it first, so what the admin API,
        the metrics and outcomes see is never behind."""
        unwritten, self._unwritten = self._unwritten, []
        own_ids, client_ids = self._recent_own_ids, self._recent_requests
        for live, arm, ok, seconds, request_id, id_counter in unwritten:
            stats = live.stats[arm]
            stats.latencies_seconds[stats.requests & LATENCY_SLOT_MASK] = seconds
            stats.requests += 1
            if not ok:
                stats.errors += 1
            route = live.routes[arm]
            if id_counter is not None:
                own_ids.remember(id_counter, route)
            elif request_id:
                client_ids.remember(request_id, route)
            if (
                live.rule.rollback is not None
                and not live.rolled_back
                and arm == live.candidate
                and stats.requests % ROLLBACK_CHECK_EVERY == 0
            ):
                self._check_rollback(live)

    def _check_rollback(self, live: LiveRule) -> None:
        policy = live.rule.rollback
        assert policy is not None and live.candidate is not None
        base, cand = live.stats[live.baseline], live.stats[live.candidate]
        reason = assign.rollback_reason(
            baseline_requests=base.requests,
            baseline_errors=base.errors,
            baseline_p99_ms=base.latency_percentiles_ms()[1],
            candidate_requests=cand.requests,
            candidate_errors=cand.errors,
            candidate_p99_ms=cand.latency_percentiles_ms()[1],
            min_requests=policy.min_requests,
            max_error_rate_increase=policy.max_error_rate_increase,
            max_p99_latency_increase_ms=policy.max_p99_latency_increase_ms,
        )
        if reason is None:
            return
        live.rolled_back = True
        live.rollback_reason = f"arm {live.names[live.candidate]}: {reason}"
        log.warning(
            "Model %s: traffic rolled back to arm %s: %s",
            live.model,
            live.names[live.baseline],
            live.rollback_reason,
        )
        for observer in self.rollback_observers:
            try:
                observer(live)
            except Exception:
                log.exception("A rollback observer failed")

    # --- outcomes ---

    def report_outcome(
        self,
        model: str,
        *,
        request_id: str | None = None,
        routing_key: str | None = None,
        conversion: bool | None = None,
        reward: float | None = None,
    ) -> tuple[LiveRule, int]:
        """Count an outcome for the arm that served `request_id` (one of the recent ones)
        or `routing_key` (the arm it was last routed to, else the one it hashes to now)."""
        self.write_records()
        live = self.rules.get(model)
        if live is None:
            raise ServingError(Code.NOT_FOUND, f"Model {model} has no traffic rule")
        if (request_id is None) == (routing_key is None):
            raise ServingError(
                Code.INVALID_ARGUMENT, "An outcome names exactly one of request_id or routing_key"
            )
        if (conversion is None) == (reward is None):
            raise ServingError(
                Code.INVALID_ARGUMENT, "An outcome carries exactly one of conversion or reward"
            )
        if request_id is not None:
            # An id shaped like the gateway's own is looked up by its counter; a client may
            # also have sent one (a retry echoing it), which record() filed by its text.
            counter = own_counter(request_id)
            found = self._recent_own_ids.get(counter) if counter is not None else None
            if found is None:
                found = self._recent_requests.get(request_id)
        else:
            found = self._recent_keys.get(model_key(model, str(routing_key)))
        if found is not None and found[0] is not live and routing_key is not None:
            found = None  # a key last routed by a replaced rule: where it hashes now
        if found is not None:
            served_by, arm = found
            if served_by is not live:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"The request ran under a traffic rule of model {model} that was "
                    "replaced since; its outcome is not counted",
                )
        elif request_id is not None:
            raise ServingError(
                Code.NOT_FOUND,
                f"Unknown request id {request_id[:80]!r} for model {model} (not routed by its "
                "traffic rule, or too old to be remembered)",
            )
        else:
            arm = assign.arm_for_key(live.rule_id, str(routing_key), live.weights(self.clock()))
        stats = live.stats[arm]
        if conversion is not None:
            stats.add_conversion(conversion)
            if live.rule.bandit:
                live._outcomes_since_bandit += 1
                if live._outcomes_since_bandit >= BANDIT_REFRESH_OUTCOMES:
                    live._outcomes_since_bandit = 0
                    live.refresh_bandit()
        else:
            assert reward is not None
            stats.add_reward(reward)
        return live, arm

    # --- shadow ---

    def record_shadow(
        self,
        live: LiveRule,
        primary: dict[str, np.ndarray],
        shadow: dict[str, np.ndarray] | None,
    ) -> None:
        """A shadow copy finished: its agreement with the primary answer (None: it failed)."""
        stats = live.shadow
        if shadow is None:
            stats.errors += 1
            return
        max_diff, agree, rows = agreement(primary, shadow)
        stats.compared += 1
        if max_diff is not None:
            stats.max_abs_diff = (
                max_diff if stats.max_abs_diff is None else max(stats.max_abs_diff, max_diff)
            )
            stats.sum_max_abs_diff += max_diff
        stats.argmax_agree_rows += agree
        stats.argmax_rows += rows

    # --- admin API ---

    def describe(self, model: str) -> dict[str, Any]:
        """GET /v1/admin/models/{name}/traffic."""
        self.write_records()
        live = self.rules.get(model)
        if live is None:
            raise ServingError(Code.NOT_FOUND, f"Model {model} has no traffic rule")
        now = self.clock()
        weights = live.weights(now)
        total = sum(weights) or 1.0
        baseline = live.stats[live.baseline]
        arms = [
            {
                "name": arm.name,
                "version": arm.version,
                "label": arm.label,
                "baseline": index == live.baseline,
                "weight": round(weights[index] / total, 6),
                "stats": summarize(
                    live.stats[index], None if index == live.baseline else baseline
                ),
            }
            for index, arm in enumerate(live.arms)
        ]
        ramp = live.rule.ramp
        state: dict[str, Any] = {
            "rule_id": live.rule_id,
            "started_at": live.started_at,
            "ramp_step": live.ramp_step(now) if ramp is not None else None,
            "ramp_steps": len(ramp.steps_percent) if ramp is not None else None,
            "candidate": live.names[live.candidate] if live.candidate is not None else None,
            "rolled_back": live.rolled_back,
            "rollback_reason": live.rollback_reason,
            "bandit": live.rule.bandit,
        }
        shadow = live.rule.shadow
        return {
            "model": model,
            "rule": live.rule.document(),
            "state": state,
            "arms": arms,
            "shadow": (
                live.shadow.document(shadow.version, shadow.fraction)
                if shadow is not None
                else None
            ),
        }

    def summary(self, model: str) -> dict[str, Any] | None:
        """The compact `traffic` entry of GET /v1/admin/models/{name} (None: no rule)."""
        self.write_records()
        live = self.rules.get(model)
        if live is None:
            return None
        weights = live.weights(self.clock())
        total = sum(weights) or 1.0
        return {
            "rule_id": live.rule_id,
            "arms": {
                arm.name: round(weights[i] / total, 6) for i, arm in enumerate(live.arms)
            },
            "rolled_back": live.rolled_back,
            "shadow_version": live.rule.shadow.version if live.rule.shadow else None,
        }

    def metric_rows(self) -> list[tuple[tuple[str, str, str], dict[str, float]]]:
        """Per (model, arm, version-or-label) the values the Prometheus page shows; arm
        names come from configured rules only, so the label set stays bounded."""
        self.write_records()
        rows = []
        now = self.clock()
        for model, live in sorted(self.rules.items()):
            weights = live.weights(now)
            total = sum(weights) or 1.0
            for index, arm in enumerate(live.arms):
                stats = live.stats[index]
                target = str(arm.version) if arm.version is not None else f"label:{arm.label}"
                rows.append(
                    (
                        (model, arm.name, target),
                        {
                            "requests": stats.requests,
                            "errors": stats.errors,
                            "weight": weights[index] / total,
                            "conversions": stats.conversions,
                            "outcomes": stats.conversion_trials + stats.reward_count,
                        },
                    )
                )
        return rows
