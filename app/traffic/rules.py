"""Traffic rules: the typed, validated shape of `[models.NAME.traffic]` and of the admin
API's PUT body. Pure data; the live state of a rule is traffic/live_rule.py's.

A rule splits the requests that name no version or label (TF Serving's "latest") among
arms; each arm names a version or a label and a weight. Optional parts: a canary ramp of
one candidate arm against the baseline with automatic rollback, shadow traffic to a
version, and a Thompson-sampling bandit over binary outcomes.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

MAX_ARMS = 16
MAX_RAMP_STEPS = 32
# Shadow copies waiting at once, over all rules (each holds its request's inputs).
SHADOW_QUEUE_MAX = 64
ARM_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Arm(_Strict):
    """One side of a split: a version or a label of the model, and its weight."""

    name: str
    version: int | None = Field(None, ge=0)
    label: str | None = Field(None, min_length=1, max_length=256)
    weight: float = Field(1.0, ge=0, allow_inf_nan=False)

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ARM_NAME_RE.fullmatch(value):
            raise ValueError(
                f"arm name {value[:80]!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        return value

    @pydantic.model_validator(mode="after")
    def _version_or_label(self) -> Arm:
        if (self.version is None) == (self.label is None):
            raise ValueError(f"arm {self.name} must name exactly one of version or label")
        return self


class Ramp(_Strict):
    """The candidate arm's weight, in percent of the traffic, step by step: each step
    lasts `step_seconds`; the baseline gets the rest."""

    candidate: str
    steps_percent: list[float] = Field(min_length=1, max_length=MAX_RAMP_STEPS)
    step_seconds: float = Field(gt=0, allow_inf_nan=False)

    @pydantic.field_validator("steps_percent")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(not 0 <= p <= 100 for p in value):
            raise ValueError("ramp steps_percent must lie in 0..100")
        if any(b < a for a, b in itertools.pairwise(value)):
            raise ValueError("ramp steps_percent must not decrease")
        return value


class Rollback(_Strict):
    """Roll the candidate back to 0% when, over at least `min_requests` requests on each
    of candidate and baseline, its error rate exceeds the baseline's by more than
    `max_error_rate_increase` (absolute, 0.05 = 5 points) or its p99 latency the
    baseline's by more than `max_p99_latency_increase_ms`."""

    min_requests: int = Field(100, ge=1)
    max_error_rate_increase: float | None = Field(0.05, ge=0, le=1)
    max_p99_latency_increase_ms: float | None = Field(None, ge=0, allow_inf_nan=False)


class Shadow(_Strict):
    """A copy of `fraction` of the rule's requests also runs on `version` after the primary
    answer was produced; at most `max_pending` copies wait, the rest are dropped."""

    version: int = Field(ge=0)
    fraction: float = Field(gt=0, le=1)
    # at most SHADOW_QUEUE_MAX: copies hold their request's tensors while they wait
    max_pending: int = Field(32, ge=1, le=SHADOW_QUEUE_MAX)


class TrafficRule(_Strict):
    """A model's traffic rule (TOML table or admin PUT body)."""

    # Part of every routing key's hash: the same key lands on the same arm for the same
    # id; a new id reshuffles the keys. Default: the model's name.
    id: str = Field("", max_length=128)
    arms: list[Arm] = Field(min_length=1, max_length=MAX_ARMS)
    baseline: str = ""  # default: the first arm
    ramp: Ramp | None = None
    rollback: Rollback | None = None
    shadow: Shadow | None = None
    bandit: bool = False  # Thompson sampling on conversions moves the weights
    # Seed of the random draw for requests without a routing key; None: unseeded.
    seed: int | None = None

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> TrafficRule:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        if self.baseline and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not one of the arms")
        if self.ramp is not None:
            if len(self.arms) != 2:
                raise ValueError("a ramp needs exactly two arms: the baseline and the candidate")
            if self.ramp.candidate not in names or self.ramp.candidate == self.baseline_name:
                raise ValueError("ramp candidate must be the arm that is not the baseline")
        elif sum(a.weight for a in self.arms) <= 0:
            raise ValueError("the arms' weights must not all be 0")
        if self.rollback is not None and len(self.arms) != 2:
            raise ValueError("rollback needs exactly two arms: the baseline and the candidate")
        if self.bandit and self.ramp is not None:
            raise ValueError("bandit and ramp cannot be combined")
        return self

    @property
    def baseline_name(self) -> str:
        return self.baseline or self.arms[0].name

    @property
    def candidate_name(self) -> str | None:
        """The arm a ramp or rollback acts on (the non-baseline arm of a two-arm rule)."""
        if self.ramp is not None:
            return self.ramp.candidate
        others = [a.name for a in self.arms if a.name != self.baseline_name]
        return others[0] if len(others) == 1 else None

    def document(self) -> dict[str, Any]:
        """The rule as JSON (what PUT takes and GET returns), the baseline named."""
        return {**self.model_dump(mode="json", exclude_none=True), "baseline": self.baseline_name}


def parse_rule(data: Any) -> TrafficRule:
    """A validated rule from TOML or JSON; ValueError with one readable line otherwise."""
    try:
        return TrafficRule.model_validate(data)
    except pydantic.ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{where}: {message}" if where else message) from None
