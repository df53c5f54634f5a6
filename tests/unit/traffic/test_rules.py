"""Traffic rule validation: what the TOML table and the admin PUT body may say."""

from __future__ import annotations

import pytest

from app.traffic.rules import parse_rule

TWO = [{"name": "a", "version": 1}, {"name": "b", "version": 2}]


def test_a_full_rule_round_trips() -> None:
    data = {
        "id": "exp",
        "arms": [{"name": "a", "version": 1, "weight": 50.0},
                 {"name": "b", "label": "canary", "weight": 50.0}],
        "baseline": "a",
        "ramp": {"candidate": "b", "steps_percent": [5.0, 25.0, 100.0], "step_seconds": 60.0},
        "rollback": {"min_requests": 10, "max_error_rate_increase": 0.02,
                     "max_p99_latency_increase_ms": 5.0},
        "shadow": {"version": 3, "fraction": 0.1, "max_pending": 32},
        "bandit": False,
        "seed": 4,
    }
    rule = parse_rule(data)
    assert rule.document() == data
    assert rule.candidate_name == "b"
    assert parse_rule(rule.document()) == rule


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"arms": []}, "arms: List should have at least 1 item"),
        ({}, "arms: Field required"),
        ({"arms": [{"name": "a"}]}, "arms.0: arm a must name exactly one of version or label"),
        ({"arms": [{"name": "a", "version": 1, "label": "x"}]}, "exactly one of version"),
        ({"arms": [{"name": "a b", "version": 1}]}, "must be 1-64 letters"),
        ({"arms": [{"name": "a", "version": -1}]}, "arms.0.version"),
        ({"arms": [{"name": "a", "version": 1, "weight": -1}]}, "arms.0.weight"),
        ({"arms": [{"name": "a", "version": 1, "weight": 0}]}, "must not all be 0"),
        ({"arms": [{"name": "a", "version": 1}, {"name": "a", "version": 2}]}, "unique"),
        ({"arms": TWO, "baseline": "z"}, "baseline 'z' is not one of the arms"),
        ({"arms": TWO, "ramp": {"candidate": "a", "steps_percent": [5], "step_seconds": 1}},
         "ramp candidate must be the arm that is not the baseline"),
        ({"arms": TWO, "ramp": {"candidate": "b", "steps_percent": [50, 5],
                                "step_seconds": 1}}, "must not decrease"),
        ({"arms": TWO, "ramp": {"candidate": "b", "steps_percent": [150],
                                "step_seconds": 1}}, "0..100"),
        ({"arms": TWO[:1], "rollback": {}}, "rollback needs exactly two arms"),
        ({"arms": TWO, "bandit": True,
          "ramp": {"candidate": "b", "steps_percent": [5], "step_seconds": 1}},
         "bandit and ramp cannot be combined"),
        ({"arms": TWO, "shadow": {"version": 3, "fraction": 0}}, "shadow.fraction"),
        ({"arms": TWO, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ("not a table", "Input should be a valid dictionary"),
    ],
)
def test_invalid_rules(data: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_rule(data)
    assert message in str(error.value)


def test_toml_traffic_tables_are_validated_at_startup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.main import traffic_rules
    from app.settings.settings import SettingsError, load_settings

    good = tmp_path / "good.toml"
    good.write_text(
        '[models.m.traffic]\nid = "exp"\n'
        '[[models.m.traffic.arms]]\nname = "a"\nversion = 1\nweight = 90\n'
        '[[models.m.traffic.arms]]\nname = "b"\nlabel = "canary"\nweight = 10\n'
    )
    settings = load_settings([f"--config={good}", "--model_base_path=/m"], environ={})
    rules = traffic_rules(settings)
    assert rules["m"].id == "exp" and [a.weight for a in rules["m"].arms] == [90, 10]

    bad = tmp_path / "bad.toml"
    bad.write_text('[models.m.traffic]\narms = [{name = "a"}]\n')
    settings = load_settings([f"--config={bad}", "--model_base_path=/m"], environ={})
    with pytest.raises(SettingsError) as error:
        traffic_rules(settings)
    assert str(error.value) == (
        f"[models.m.traffic]: arms.0: arm a must name exactly one of version or label "
        f"(in {bad})"
    )
