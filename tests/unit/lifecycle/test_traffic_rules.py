"""Traffic rules as model state (lifecycle/traffic_rules.py): checks on set, persistence in
the admin state file, and the startup precedence of state file over TOML."""

from __future__ import annotations

import json
import pathlib

import pytest

from app.core.errors import Code, ServingError
from app.core.types import VersionState
from app.lifecycle.registry import Registry, VersionRecord
from app.lifecycle.state_file import StateFile
from app.lifecycle.traffic_rules import TrafficRules
from app.settings.model_config import ModelConfig
from app.traffic.router import TrafficRouter
from app.traffic.rules import parse_rule

RULE = {"arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]}
TOML_RULE = {"id": "toml", "arms": [{"name": "a", "version": 1}]}


def _registry() -> Registry:
    registry = Registry()
    registry.configure([ModelConfig("m", "/m")])
    for version in (1, 2):
        registry.models["m"].versions[version] = VersionRecord(
            version, f"/m/{version}", state=VersionState.AVAILABLE
        )
    return registry


def _rules(path: pathlib.Path, toml: dict | None = None) -> tuple[TrafficRules, TrafficRouter]:
    router = TrafficRouter()
    toml_rules = {"m": parse_rule(toml)} if toml else {}
    return TrafficRules(_registry(), router, StateFile(str(path)), toml_rules), router


def test_set_checks_pins_versions_and_labels(tmp_path: pathlib.Path) -> None:
    rules, router = _rules(tmp_path / "state.json")
    rules.registry.models["m"].pinned = 1
    with pytest.raises(ServingError) as pinned:
        rules.set("m", parse_rule(RULE))
    assert pinned.value.code is Code.FAILED_PRECONDITION
    assert pinned.value.message == (
        "Model m has a pinned version 1; unpin it before setting a traffic rule"
    )
    rules.registry.models["m"].pinned = None
    for bad, text in (
        ({"arms": [{"name": "x", "version": 7}]}, "version 7 of model m is not available"),
        ({"arms": [{"name": "x", "label": "gone"}]}, "has no version label 'gone'"),
        ({**RULE, "shadow": {"version": 9, "fraction": 1}}, "Shadow version 9"),
    ):
        with pytest.raises(ServingError) as refused:
            rules.set("m", parse_rule(bad))
        assert text in refused.value.message
    with pytest.raises(ServingError) as unknown:
        rules.set("nope", parse_rule(RULE))
    assert unknown.value.code is Code.NOT_FOUND
    assert router.rules == {}


def test_persisted_rules_survive_and_deletes_override_the_toml(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pins": {"other": 3}}))
    rules, router = _rules(state, TOML_RULE)
    rules.restore()
    assert router.rules["m"].rule_id == "toml"
    rules.set("m", parse_rule(RULE))
    saved = json.loads(state.read_text())
    assert saved["pins"] == {"other": 3}  # the pins' section is kept
    assert saved["traffic"]["m"]["rule"] == parse_rule(RULE).document()
    assert saved["traffic"]["m"]["source"] == "admin"

    again, router2 = _rules(state, TOML_RULE)  # a restart: the admin's rule wins
    again.restore()
    assert router2.rules["m"].rule.document() == parse_rule(RULE).document()
    again.delete("m")
    assert json.loads(state.read_text())["traffic"] == {"m": None}
    third, router3 = _rules(state, TOML_RULE)  # deleted through the API: the TOML's stays off
    third.restore()
    assert router3.rules == {}


def test_a_toml_rule_keeps_its_ramp_start_until_the_toml_changes(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state.json"
    ramp = {"id": "r", "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}],
            "ramp": {"candidate": "b", "steps_percent": [10, 100], "step_seconds": 60}}
    first, router = _rules(state, ramp)
    first.restore()
    started = router.rules["m"].started_at
    assert json.loads(state.read_text())["traffic"]["m"]["source"] == "config"
    second, router2 = _rules(state, ramp)
    second.restore()
    assert router2.rules["m"].started_at == started
    changed = {**ramp, "id": "r2"}
    third, router3 = _rules(state, changed)
    third.restore()
    assert router3.rules["m"].rule_id == "r2"


def test_a_rule_that_cannot_be_saved_is_not_applied(tmp_path: pathlib.Path) -> None:
    (tmp_path / "dir").write_text("a file where the directory should be")
    rules, router = _rules(tmp_path / "dir" / "state.json")
    with pytest.raises(ServingError) as failed:
        rules.set("m", parse_rule(RULE))
    assert failed.value.code is Code.UNAVAILABLE
    assert failed.value.message.endswith("nothing was changed")
    assert router.rules == {}
