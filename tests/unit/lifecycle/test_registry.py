"""Registry: version policies, the availability-preserving planner, resolution, labels."""

from __future__ import annotations

import pytest

from app.core.errors import Code, ServingError
from app.core.protos import meta_graph_pb2
from app.core.signatures import ServableMetadata
from app.core.types import ModelSpec, ServableId, VersionState
from app.lifecycle.registry import (
    Action,
    ModelRecord,
    Registry,
    VersionRecord,
    plan_next_action,
)
from app.settings.model_config import ModelConfig, PolicyKind, VersionPolicy

S, L, A, U, E = (
    VersionState.START,
    VersionState.LOADING,
    VersionState.AVAILABLE,
    VersionState.UNLOADING,
    VersionState.END,
)


@pytest.mark.parametrize(
    ("policy", "on_disk", "expected"),
    [
        (VersionPolicy(), [1, 2, 3], {3}),
        (VersionPolicy(num_versions=2), [1, 2, 3], {2, 3}),
        (VersionPolicy(num_versions=5), [1, 2], {1, 2}),
        (VersionPolicy(), [], set()),
        (VersionPolicy(PolicyKind.ALL), [1, 5, 3], {1, 3, 5}),
        (VersionPolicy(PolicyKind.SPECIFIC, versions=(1, 4)), [1, 2, 3], {1}),
        (VersionPolicy(PolicyKind.SPECIFIC, versions=(9,)), [1, 2], set()),
    ],
)
def test_policy_aspired(policy: VersionPolicy, on_disk: list[int], expected: set[int]) -> None:
    assert policy.aspired(on_disk) == expected


def _model(
    states: dict[int, tuple[VersionState, bool]], errors: tuple[int, ...] = ()
) -> ModelRecord:
    model = ModelRecord(ModelConfig("m", "/m"))
    for version, (state, aspired) in states.items():
        record = VersionRecord(version, f"/m/{version}", state=state, aspired=aspired)
        if version in errors:
            record.error = ServingError(Code.UNKNOWN, "boom")
        model.versions[version] = record
    return model


@pytest.mark.parametrize(
    ("states", "errors", "expected"),
    [
        # nothing loaded: load the highest aspired first
        ({1: (S, True), 2: (S, True)}, (), Action("load", 2)),
        # new version aspired, old still serving and the only one: load new first
        ({1: (A, False), 2: (S, True)}, (), Action("load", 2)),
        # new version available: now unload the old one
        ({1: (A, False), 2: (A, True)}, (), Action("unload", 1)),
        # rollback: newest deleted (un-aspired) while older is aspired again
        ({1: (S, True), 2: (A, False)}, (), Action("load", 1)),
        ({1: (A, True), 2: (A, False)}, (), Action("unload", 2)),
        # everything deleted: unload all
        ({1: (A, False)}, (), Action("unload", 1)),
        # steady state
        ({1: (A, True)}, (), None),
        # a failed version is not retried while it stays aspired
        ({1: (E, True)}, (1,), None),
        # the new aspired version failed: the old one keeps serving
        ({1: (A, False), 2: (E, True)}, (2,), None),
        # two old ones up while the new one loads: unload the lowest
        ({1: (A, False), 2: (A, False), 3: (L, True)}, (), Action("unload", 1)),
        # lowest un-aspired first
        ({1: (A, False), 2: (A, False), 3: (A, True)}, (), Action("unload", 1)),
    ],
)
def test_plan_next_action(states, errors, expected) -> None:  # type: ignore[no-untyped-def]
    assert plan_next_action(_model(states, errors)) == expected


def test_plan_reload_of_replaced_version() -> None:
    model = _model({1: (A, True)})
    model.versions[1].needs_reload = True
    assert plan_next_action(model) == Action("reload", 1)


def _metadata() -> ServableMetadata:
    graph = meta_graph_pb2.MetaGraphDef()
    graph.signature_def["serving_default"].method_name = "tensorflow/serving/predict"
    return ServableMetadata.from_bytes(graph.SerializeToString())


def _registry(available: list[int], labels: tuple[tuple[str, int], ...] = ()) -> Registry:
    registry = Registry()
    registry.configure([ModelConfig("m", "/m", VersionPolicy(PolicyKind.ALL), labels)])
    registry.set_aspired_versions("m", {v: f"/m/{v}" for v in available})
    for v in available:
        record = registry.models["m"].versions[v]
        record.state = A
        record.metadata = _metadata()
    registry.apply_labels("m")
    return registry


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (ModelSpec("m"), 3),
        (ModelSpec("m", version=1), 1),
        (ModelSpec("m", label="stable"), 1),
        (ModelSpec("m", label="canary"), 3),
    ],
)
def test_resolve(spec: ModelSpec, expected: int) -> None:
    registry = _registry([1, 3], (("stable", 1), ("canary", 3)))
    assert registry.resolve(spec)[0] == ServableId("m", expected)


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        (ModelSpec("nope"), Code.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (
            ModelSpec("m", version=2),
            Code.NOT_FOUND,
            "Servable not found for request: Specific(m, 2)",
        ),
        (
            ModelSpec("m", label="x"),
            Code.INVALID_ARGUMENT,
            "Unrecognized servable version label: x",
        ),
        (
            ModelSpec("nope", label="x"),
            Code.INVALID_ARGUMENT,
            "Unrecognized servable version label: x",
        ),
    ],
)
def test_resolve_errors(spec: ModelSpec, code: Code, message: str) -> None:
    with pytest.raises(ServingError) as info:
        _registry([1, 3]).resolve(spec)
    assert (info.value.code, info.value.message) == (code, message)


def test_pin_wins_over_latest_but_not_over_explicit_version() -> None:
    registry = _registry([1, 3])
    registry.models["m"].pinned = 1
    assert registry.resolve(ModelSpec("m"))[0].version == 1
    assert registry.resolve(ModelSpec("m", version=3))[0].version == 3


def test_latest_is_the_newest_available_version_whatever_the_order_versions_arrived() -> None:
    # versions enter in discovery order, not numeric order; the newest (9) still loads
    registry = _registry([])
    model = registry.models["m"]
    for version in (7, 9, 2):
        model.versions[version] = VersionRecord(version, f"/m/{version}", state=A)
        model.versions[version].metadata = _metadata()
    model.versions[9].state = L
    assert registry.resolve(ModelSpec("m"))[0].version == 7
    model.versions[9].state = A
    assert registry.resolve(ModelSpec("m"))[0].version == 9


def test_pin_on_a_version_that_is_not_available_falls_back_to_the_newest() -> None:
    registry = _registry([1, 3])
    model = registry.models["m"]
    model.pinned = 1
    model.versions[1].state = U
    assert registry.resolve(ModelSpec("m"))[0].version == 3
    model.versions[3].state = U
    with pytest.raises(ServingError) as info:
        registry.resolve(ModelSpec("m"))
    assert info.value.message == "Servable not found for request: Latest(m)"


def test_label_to_unavailable_version_refused_unless_allowed() -> None:
    registry = _registry([1], (("next", 2),))
    assert "next" not in registry.models["m"].labels
    registry.allow_labels_for_unavailable = True
    registry.apply_labels("m")
    assert registry.models["m"].labels == {"next": 2}


def _labelled(*labels: tuple[str, int]) -> list[ModelConfig]:
    return [ModelConfig("m", "/m", VersionPolicy(PolicyKind.ALL), labels)]


def test_reload_label_check_follows_update_model_version_label_map() -> None:
    registry = _registry([1, 3], (("stable", 1),))
    unavailable = (
        "Request to assign label to version 2 of model m, which is not currently available "
        "for inference"
    )
    assert registry.reload_label_error(_labelled(("stable", 3), ("canary", 1))) is None
    assert registry.reload_label_error(_labelled(("canary", 2))) == unavailable
    # A model the reload adds has no AVAILABLE version yet.
    new_model = [ModelConfig("new", "/n", VersionPolicy(PolicyKind.ALL), (("a", 1),))]
    assert registry.reload_label_error(new_model) == (
        "Request to assign label to version 1 of model new, which is not currently available "
        "for inference"
    )
    registry.allow_labels_for_unavailable = True
    # The flag lets a new label point anywhere, but not move an existing one.
    assert registry.reload_label_error(_labelled(("canary", 2))) is None
    assert registry.reload_label_error(new_model) is None
    assert registry.reload_label_error(_labelled(("stable", 2))) == unavailable


def test_configure_is_full_replacement() -> None:
    registry = _registry([1])
    dropped = registry.configure([ModelConfig("other", "/o")])
    assert dropped == ["m"]
    assert not registry.models["m"].versions[1].aspired
    assert registry.dropped == {"m"}
    assert not registry.all_available()


def test_replaced_directory_marks_reload() -> None:
    registry = _registry([1])
    registry.set_aspired_versions("m", {1: "/m/1"}, replaced=[1])
    assert registry.models["m"].versions[1].needs_reload
