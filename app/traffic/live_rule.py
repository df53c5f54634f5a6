"""One model's traffic rule in force: its arms, the weights in force now (configured, ramp
step, rollback, bandit), the per-arm counters and the shadow copies' agreement.

Data path position: traffic/router.py keeps one LiveRule per model with a rule and hands
out its `routes` (made once per arm) on the request path; a request keeps the LiveRule it
was routed by, so its counts go to the rule it ran under. Event-loop only.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from app.core.types import ModelSpec
from app.traffic import assign
from app.traffic.arms import ArmStats
from app.traffic.rules import Arm, TrafficRule


@dataclasses.dataclass
class ShadowStats:
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    compared: int = 0
    max_abs_diff: float | None = None
    sum_max_abs_diff: float = 0.0
    argmax_agree_rows: int = 0
    argmax_rows: int = 0

    def document(self, version: int, fraction: float) -> dict[str, Any]:
        return {
            "version": version,
            "fraction": fraction,
            "sent": self.sent,
            "dropped": self.dropped,
            "errors": self.errors,
            "compared": self.compared,
            "max_abs_diff": self.max_abs_diff,
            "mean_max_abs_diff": (
                round(self.sum_max_abs_diff / self.compared, 9) if self.compared else None
            ),
            "argmax_agreement": (
                round(self.argmax_agree_rows / self.argmax_rows, 6) if self.argmax_rows else None
            ),
        }


class LiveRule:
    """One model's rule in force, with its counters and ramp / rollback state."""

    def __init__(
        self,
        model: str,
        rule: TrafficRule,
        *,
        started_at: float,
        rolled_back: bool = False,
        rollback_reason: str | None = None,
    ) -> None:
        self.model = model
        self.rule = rule
        self.rule_id = rule.id or model
        self.arms: list[Arm] = list(rule.arms)
        self.names = [a.name for a in self.arms]
        self.baseline = self.names.index(rule.baseline_name)
        candidate = rule.candidate_name
        self.candidate = self.names.index(candidate) if candidate is not None else None
        self.stats = [ArmStats() for _ in self.arms]
        # What choose() hands out and write_records() remembers: one tuple per arm, made
        # once, so the request path allocates none.
        self.routes: tuple[tuple[LiveRule, int], ...] = tuple(
            (self, index) for index in range(len(self.arms))
        )
        # ... and what the registry resolves for each arm (the registry reads no signature)
        self.specs = tuple(ModelSpec(model, arm.version, arm.label) for arm in self.arms)
        self.started_at = started_at
        self._rolled_back = rolled_back
        self.rollback_reason = rollback_reason
        self.rng = random.Random(rule.seed)
        # Which requests get a shadow copy: its own stream, so shadowing does not change
        # the seeded arm draws.
        self.shadow_rng = random.Random(None if rule.seed is None else rule.seed + 1)
        self.configured_weights = [a.weight for a in self.arms]
        self.bandit_weights: list[float] | None = None
        self._outcomes_since_bandit = 0
        self.shadow = ShadowStats()
        # running totals of the weights in force (None: recompute); a ramp's move with the
        # clock, so a ramping rule recomputes them per request instead
        self.cumulative: list[float] | None = None
        # routing key -> its arm under `cumulative` (a key's hash is the dearest part of a
        # keyed choice, and the same users come back); emptied whenever the weights change
        self.key_arms: dict[str, int] = {}

    @property
    def rolled_back(self) -> bool:
        return self._rolled_back

    @rolled_back.setter
    def rolled_back(self, value: bool) -> None:
        self._rolled_back = value
        self.weights_changed()

    def weights_changed(self) -> None:
        """Forget what was derived from the weights in force (rollback, bandit refresh)."""
        self.cumulative = None
        self.key_arms = {}

    def cumulative_weights(self, clock: Callable[[], float]) -> list[float]:
        """The table `assign.arm_in` searches for the weights in force now."""
        cumulative = self.cumulative
        if cumulative is None:
            cumulative = assign.cumulative_weights(self.weights(clock()))
            if self.rule.ramp is None or self._rolled_back:
                self.cumulative = cumulative
        return cumulative

    def weights(self, now: float) -> list[float]:
        """The effective weights now: rolled back -> all on the baseline; a ramp -> its
        step's share; a bandit -> Thompson's; else the configured ones."""
        if self.rolled_back:
            weights = [0.0] * len(self.arms)
            weights[self.baseline] = 1.0
            return weights
        ramp = self.rule.ramp
        if ramp is not None and self.candidate is not None:
            step = self.ramp_step(now)
            return assign.ramp_weights(
                self.baseline, self.candidate, len(self.arms), ramp.steps_percent[step]
            )
        if self.bandit_weights is not None:
            return self.bandit_weights
        return self.configured_weights

    def ramp_step(self, now: float) -> int:
        ramp = self.rule.ramp
        if ramp is None:
            return 0
        return assign.ramp_step(now - self.started_at, ramp.step_seconds, len(ramp.steps_percent))

    def target(self, arm: int) -> tuple[int | None, str | None]:
        return self.arms[arm].version, self.arms[arm].label

    def refresh_bandit(self) -> None:
        successes = [s.conversions for s in self.stats]
        failures = [s.conversion_trials - s.conversions for s in self.stats]
        self.bandit_weights = assign.thompson_weights(successes, failures, self.rng)
        self.weights_changed()
