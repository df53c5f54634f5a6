"""Models, versions, states, labels and pins; request resolution; the transition planner.

Data path position: serving/service.py asks `resolve(spec)` for the one ServableId a request runs
on. Lifecycle position: ServerCore calls `set_aspired_versions()` with what discovery found (the one
way in for versions) and changes configs, pins and admin overrides; lifecycle/manager.py executes
what `plan_next_action()` (a pure function) says and records states here. Event-loop only: no locks,
no I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Iterator

from app.core.errors import Code, ServingError
from app.core.signatures import ServableMetadata
from app.core.types import ModelSpec, ServableId, VersionState
from app.settings.model_config import ModelConfig


@dataclasses.dataclass
class VersionRecord:
    version: int
    path: str
    state: VersionState = VersionState.START
    error: ServingError | None = None
    metadata: ServableMetadata | None = None
    in_flight: int = 0
    aspired: bool = True
    load_attempts: int = 0
    # The directory was replaced in place while loaded: load it again and swap.
    needs_reload: bool = False
    # Digest of the files the loaded copy came from (lifecycle/fingerprint.py); the result
    # cache keys on it.
    fingerprint: bytes = b""
    # While the version unloads: set when its last in-flight request is released.
    drained: asyncio.Event | None = None


@dataclasses.dataclass
class ModelRecord:
    config: ModelConfig
    versions: dict[int, VersionRecord] = dataclasses.field(default_factory=dict)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    pinned: int | None = None
    on_disk: dict[int, str] = dataclasses.field(default_factory=dict)
    # Admin overrides of the policy: versions loaded / kept unloaded on request.
    forced: set[int] = dataclasses.field(default_factory=set)
    excluded: set[int] = dataclasses.field(default_factory=set)

    @property
    def name(self) -> str:
        return self.config.name

    def available_versions(self) -> list[int]:
        return sorted(self._available())

    def default_record(self) -> VersionRecord | None:
        """What a request naming no version or label runs on: the pinned version while it
        is AVAILABLE, else the newest AVAILABLE one (None: none is). Runs per request that
        names none (TF Serving's "latest"): one pass over the versions, no generator, no
        sort (a third of the time max() over a generator took)."""
        versions = self.versions
        if self.pinned is not None:
            record = versions.get(self.pinned)
            if record is not None and record.state is VersionState.AVAILABLE:
                return record
        newest: VersionRecord | None = None
        for version, record in versions.items():
            if record.state is VersionState.AVAILABLE and (
                newest is None or version > newest.version
            ):
                newest = record
        return newest

    def _available(self) -> Iterator[int]:
        return (v for v, r in self.versions.items() if r.state is VersionState.AVAILABLE)


@dataclasses.dataclass(frozen=True)
class Action:
    kind: str  # "load" | "unload" | "reload"
    version: int


def plan_next_action(model: ModelRecord) -> Action | None:
    """AvailabilityPreservingPolicy: the next load or unload for one model, or None.

    First unload the lowest un-aspired AVAILABLE version, unless it is the only one up
    while aspired versions exist and none of them is AVAILABLE yet; otherwise reload a
    replaced directory, else load the highest aspired version not yet loaded. A version
    that ended in error stays down until it is un-aspired and aspired again. Pure: same
    input, same answer.
    """
    records = model.versions
    aspired = [v for v, r in records.items() if r.aspired]
    unaspired_up = sorted(
        v for v, r in records.items() if not r.aspired and r.state is VersionState.AVAILABLE
    )
    if unaspired_up:
        aspired_available = any(records[v].state is VersionState.AVAILABLE for v in aspired)
        # TF's rule: keep the last serving version while an aspired one is not up yet
        # (loading, or failed: a failed new version never takes down the serving one).
        if not aspired or aspired_available or len(unaspired_up) > 1:
            return Action("unload", unaspired_up[0])
    for version in sorted(aspired, reverse=True):
        record = records[version]
        if record.needs_reload and record.state is VersionState.AVAILABLE:
            return Action("reload", version)
    to_load = sorted(
        (v for v in aspired if records[v].state is VersionState.START and records[v].error is None),
        reverse=True,
    )
    if to_load:
        return Action("load", to_load[0])
    return None


class Registry:
    """Every model the server knows, keyed by name."""

    def __init__(self, allow_labels_for_unavailable: bool = False) -> None:
        self.models: dict[str, ModelRecord] = {}
        # Removed from the config; forgotten by the manager once fully unloaded.
        self.dropped: set[str] = set()
        self.allow_labels_for_unavailable = allow_labels_for_unavailable

    # --- configuration ---

    def configure(self, configs: Iterable[ModelConfig]) -> list[str]:
        """Full replacement: returns the names of models dropped from the config."""
        wanted = {c.name: c for c in configs}
        dropped = [name for name in self.models if name not in wanted]
        for name, config in wanted.items():
            record = self.models.get(name)
            if record is None:
                self.models[name] = ModelRecord(config)
            else:
                record.config = config
        for name in dropped:
            for record in self.models[name].versions.values():
                record.aspired = False
        self.dropped = (self.dropped | set(dropped)) - set(wanted)
        return dropped

    def forget(self, name: str) -> None:
        self.models.pop(name, None)
        self.dropped.discard(name)

    def set_aspired_versions(
        self, name: str, on_disk: dict[int, str], replaced: Iterable[int] = ()
    ) -> None:
        """The one way in for versions (called by discovery): what is on disk now, and
        which of those directories were replaced in place since the last call."""
        model = self.models[name]
        for version in replaced:
            record = model.versions.get(version)
            if record is None:
                continue
            record.path = on_disk[version]
            if record.state is VersionState.AVAILABLE:
                record.needs_reload = True
            elif record.state is VersionState.END:
                del model.versions[version]  # a failed or unloaded copy: start afresh
        model.on_disk = dict(on_disk)
        self.recompute_aspired(name)

    def aspired_among(self, name: str, on_disk: Iterable[int]) -> set[int]:
        """Aspired = policy(on disk) + pinned + forced - excluded, among `on_disk`."""
        model = self.models[name]
        if name in self.dropped:
            return set()
        found = set(on_disk)
        aspired = model.config.policy.aspired(found)
        aspired |= {v for v in (model.pinned, *model.forced) if v is not None and v in found}
        return aspired - model.excluded

    def recompute_aspired(self, name: str) -> None:
        """The aspired versions among what is on disk now (aspired_among)."""
        model = self.models[name]
        on_disk = model.on_disk
        aspired = self.aspired_among(name, on_disk)
        for version, record in model.versions.items():
            was = record.aspired
            record.aspired = version in aspired
            if record.aspired and not was and record.state is VersionState.END:
                # re-aspired after an error or unload: a fresh start
                model.versions[version] = VersionRecord(version, on_disk[version])
        for version in aspired:
            if version not in model.versions:
                model.versions[version] = VersionRecord(version, on_disk[version])

    def configured(self, name: str) -> ModelRecord | None:
        """The model's record while the config lists it (None if unknown or dropped)."""
        return None if name in self.dropped else self.models.get(name)

    def _label_allowed(self, model: ModelRecord | None, label: str, version: int) -> bool:
        """ServerCore::UpdateModelVersionLabelMap's rule: a label may point at an AVAILABLE
        version; with --allow_version_labels_for_unavailable_models also at any other,
        unless that moves a label that already points elsewhere."""
        record = model.versions.get(version) if model is not None else None
        if record is not None and record.state is VersionState.AVAILABLE:
            return True
        current = model.labels.get(label) if model is not None else None
        return self.allow_labels_for_unavailable and current in (None, version)

    def apply_labels(self, name: str) -> None:
        """Apply configured labels; a label that may not move yet keeps its version."""
        model = self.models[name]
        labels: dict[str, int] = {}
        for label, version in model.config.labels:
            if self._label_allowed(model, label, version):
                labels[label] = version
            elif label in model.labels:
                labels[label] = model.labels[label]
        model.labels = labels

    def reload_label_error(self, configs: Iterable[ModelConfig]) -> str | None:
        """ServerCore::UpdateModelVersionLabelMap on a reload: every label of the new config
        must point at a version AVAILABLE now. With --allow_version_labels_for_unavailable_
        models a new label may point anywhere, but an existing label may not move to a
        version that is not AVAILABLE. TF Serving's text for the first violation, or None.
        (At startup tfgate does not check: labels apply once their versions are AVAILABLE.)"""
        for config in configs:
            model = self.configured(config.name)  # a dropped model has nothing AVAILABLE
            for label, version in config.labels:
                if self._label_allowed(model, label, version):
                    continue
                return (
                    f"Request to assign label to version {version} of model {config.name}, "
                    "which is not currently available for inference"
                )
        return None

    # --- resolution (hot path) ---

    def resolve(self, spec: ModelSpec) -> tuple[ServableId, ServableMetadata]:
        """explicit version > label > pin > latest AVAILABLE; raises TF Serving's errors."""
        if spec.label is not None:
            version: int | None = self._label_version(spec.name, spec.label)
        else:
            version = spec.version
        model = self.models.get(spec.name)
        record: VersionRecord | None = None
        if model is not None:
            record = model.default_record() if version is None else model.versions.get(version)
        if record is None or record.state is not VersionState.AVAILABLE or record.metadata is None:
            latest = version is None
            request = f"Latest({spec.name})" if latest else f"Specific({spec.name}, {version})"
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {request}")
        return ServableId(spec.name, record.version), record.metadata

    def _label_version(self, name: str, label: str) -> int:
        model = self.models.get(name)
        if model is None or label not in model.labels:
            raise ServingError(
                Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}"
            )
        return model.labels[label]

    def acquire(self, servable: ServableId) -> None:
        """Count a request in flight on a version, so its unload waits for it."""
        self.models[servable.model].versions[servable.version].in_flight += 1

    def _record(self, servable: ServableId) -> VersionRecord | None:
        model = self.models.get(servable.model)
        return model.versions.get(servable.version) if model else None

    def fingerprint(self, servable: ServableId) -> bytes:
        record = self._record(servable)
        return record.fingerprint if record is not None else b""

    def release(self, servable: ServableId) -> None:
        record = self._record(servable)
        if record is not None:
            record.in_flight -= 1
            if record.in_flight == 0 and record.drained is not None:
                record.drained.set()

    # --- status ---

    def version_records(self, name: str) -> list[VersionRecord]:
        model = self.models.get(name)
        return sorted(model.versions.values(), key=lambda r: r.version) if model else []

    def all_available(self) -> bool:
        """Every configured model has an AVAILABLE version (readiness)."""
        configured = [m for n, m in self.models.items() if n not in self.dropped]
        return bool(configured) and all(m.available_versions() for m in configured)
