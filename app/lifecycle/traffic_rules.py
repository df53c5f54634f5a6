"""Traffic rules as model state: who may set them, and their persistence.

Lifecycle position: ServerCore (the one owner of model state changes) delegates here; a
rule and a pin never hold on the same model (checked here and in ServerCore.pin), arms
must name versions that are AVAILABLE or labels that exist, and every change is written to
the admin state file's "traffic" section before it is applied, so it survives a restart.
Precedence at startup: a model's entry in the state file (set through the admin API; None
when deleted there) wins over its [models.NAME.traffic] table, as admin pins win over the
config. Event-loop only.
"""

from __future__ import annotations

import logging
from typing import Any

from app.core.errors import Code, ServingError
from app.lifecycle.registry import Registry
from app.lifecycle.state_file import StateFile
from app.traffic.live_rule import LiveRule
from app.traffic.router import TrafficRouter
from app.traffic.rules import TrafficRule, parse_rule

log = logging.getLogger("tfgate.server_core")


class TrafficRules:
    """The traffic rules' owner under ServerCore."""

    def __init__(
        self,
        registry: Registry,
        router: TrafficRouter,
        state_file: StateFile,
        toml_rules: dict[str, TrafficRule],
    ) -> None:
        self.registry = registry
        self.traffic = router
        self._traffic_file = state_file
        self._toml_rules = dict(toml_rules)
        self._sources: dict[str, str] = {}  # model -> "admin" | "config": where its rule came from
        router.rollback_observers.append(self._rolled_back)

    def restore(self) -> None:
        """At startup (after the pins): each model's rule from the state file if it has an
        entry there set through the admin API (None: deleted there), else from the TOML. A
        TOML rule is written to the state file too (source "config"), so its ramp's start
        and a rollback survive restarts while the TOML keeps it unchanged. A rule on a
        pinned model is not applied (logged)."""
        saved = self._traffic_section()
        from_config = []
        for name in sorted(set(saved) | set(self._toml_rules)):
            model = self.registry.configured(name)
            if model is None:
                log.warning("Traffic rule of model %s not applied: the model is not "
                            "configured", name)
                continue
            restored = self._restored(name, saved.get(name), name in saved)
            if restored is None:
                continue
            rule, source, state = restored
            if model.pinned is not None:
                log.error("Traffic rule of model %s not applied: %s", name,
                          _pinned_text(name, model.pinned))
                continue
            self.traffic.set_rule(name, rule, **state)
            self._sources[name] = source
            if source == "config":
                from_config.append(name)
            log.info("Traffic rule of model %s applied (from the %s)", name,
                     "admin API" if source == "admin" else "config")
        for name in from_config:
            try:
                self._save_traffic(name)
            except ServingError as exc:
                log.error("Traffic rule of model %s not persisted: %s", name, exc.message)

    def _restored(
        self, name: str, entry: Any, in_file: bool
    ) -> tuple[TrafficRule, str, dict[str, Any]] | None:
        """(rule, source, set_rule's state keywords) for one model at startup, or None."""
        toml = self._toml_rules.get(name)
        if in_file and entry is None:
            return None  # deleted through the admin API: the TOML's rule stays off
        rule: TrafficRule | None = None
        if isinstance(entry, dict):
            try:
                rule = parse_rule(entry.get("rule"))
            except ValueError as exc:
                log.error("Ignoring the persisted traffic rule of model %s: %s", name, exc)
        elif in_file:
            log.error("Ignoring the persisted traffic rule of model %s: not an object", name)
        source = entry.get("source", "admin") if isinstance(entry, dict) else "admin"
        same_as_toml = toml is not None and rule is not None and rule.document() == toml.document()
        if rule is not None and (source == "admin" or same_as_toml):
            started_at = entry.get("started_at")
            reason = entry.get("rollback_reason")
            return rule, source, {
                "started_at": float(started_at) if isinstance(started_at, int | float) else None,
                "rolled_back": entry.get("rolled_back") is True,
                "rollback_reason": reason if isinstance(reason, str) else None,
            }
        # No usable entry, or one the TOML has changed since: the TOML's rule, afresh.
        return (toml, "config", {}) if toml is not None else None

    def set(self, name: str, rule: TrafficRule) -> LiveRule:
        """Replace a model's traffic rule (persisted first: a rule that could not be saved
        is not applied). In-flight requests finish on the rule that routed them."""
        traffic = self.traffic
        model = self.registry.configured(name)
        if model is None:
            raise ServingError(Code.NOT_FOUND, f"Model {name} is not configured")
        if model.pinned is not None:
            raise ServingError(Code.FAILED_PRECONDITION, _pinned_text(name, model.pinned))
        for arm in rule.arms:
            if arm.label is not None and arm.label not in model.labels:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Arm {arm.name}: model {name} has no version label {arm.label!r}",
                )
            if arm.version is not None and arm.version not in model.available_versions():
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Arm {arm.name}: version {arm.version} of model {name} is not available; "
                    "load it first",
                )
        if rule.shadow is not None and rule.shadow.version not in model.available_versions():
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f"Shadow version {rule.shadow.version} of model {name} is not available; "
                "load it first",
            )
        previous = traffic.rules.get(name)
        previous_source = self._sources.get(name)
        live = traffic.set_rule(name, rule)
        self._sources[name] = "admin"
        try:
            self._save_traffic(name)
        except ServingError:
            if previous is None:
                traffic.delete_rule(name)
            else:
                traffic.rules[name] = previous
            if previous_source is None:
                self._sources.pop(name, None)
            else:
                self._sources[name] = previous_source
            raise
        log.info("Traffic rule of model %s set: %s", name, rule.document())
        return live

    def delete(self, name: str) -> None:
        traffic = self.traffic
        previous = traffic.rules.get(name)
        if previous is None:
            raise ServingError(Code.NOT_FOUND, f"Model {name} has no traffic rule")
        traffic.delete_rule(name)
        source = self._sources.pop(name, None)
        try:
            self._save_traffic(name)
        except ServingError:
            traffic.rules[name] = previous
            if source is not None:
                self._sources[name] = source
            raise
        log.info("Traffic rule of model %s deleted", name)

    def _traffic_section(self) -> dict[str, Any]:
        section = self._traffic_file.read().get("traffic", {})
        if not isinstance(section, dict):
            log.error("Ignoring the traffic section of the admin state file: not an object")
            return {}
        return section

    def _save_traffic(self, name: str) -> None:
        """Write `name`'s rule as it is now (None: deleted; dropped from the file when no
        TOML rule would come back in its place)."""
        section = dict(self._traffic_section())
        entry = self.traffic.persisted(name)
        if entry is not None:
            entry["source"] = self._sources.get(name, "admin")
        if entry is None and name not in self._toml_rules:
            section.pop(name, None)
        else:
            section[name] = entry
        try:
            self._traffic_file.write_section("traffic", section)
        except OSError as exc:
            raise ServingError(
                Code.UNAVAILABLE,
                f"Cannot write the admin state file {self._traffic_file.path}: "
                f"{exc.strerror or exc}; nothing was changed",
            ) from None

    def _rolled_back(self, live: LiveRule) -> None:
        """A canary rolled back by itself: persist it, so a restart does not ramp again."""
        if self.traffic.rules.get(live.model) is live:
            try:
                self._save_traffic(live.model)
            except ServingError as exc:
                log.error("Model %s: the rollback was not persisted: %s", live.model, exc.message)


def _pinned_text(name: str, version: int) -> str:
    return (
        f"Model {name} has a pinned version {version}; unpin it before setting a traffic rule"
    )
