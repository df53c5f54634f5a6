"""Admin operations: list models, pin / unpin a version, load / unload a version, reload
the model config; bearer-token auth; pins persisted in a state file.

Transport-neutral: the REST routes (admin_routes.py) and the gRPC AdminService
(grpc_admin.py) both call `AdminApi`. Lifecycle position: admin -> registry (pin, forced,
excluded) -> manager.reconcile(), so versions still only enter through the registry's
aspired set, and discovery's view of the disk stays the source of truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from app.discovery import Discovery
from app.errors import Code, ServingError
from app.manager import VersionManager
from app.registry import ModelRecord, Registry
from app.state_file import write_json_atomically
from app.types import VersionState

log = logging.getLogger("tfgate.admin")

# How long a pin or an explicit load waits for the version to become AVAILABLE.
LOAD_WAIT_SECONDS = 600.0


class AdminTokens:
    """Bearer tokens for the admin API, from a file (one per line) and/or an env var
    (comma-separated). Compared in constant time; never logged."""

    ENV_VAR = "TFGATE_ADMIN_TOKENS"

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    @classmethod
    def load(cls, tokens_file: str | None) -> AdminTokens:
        tokens = [t.strip() for t in os.environ.get(cls.ENV_VAR, "").split(",")]
        if tokens_file:
            try:
                with open(tokens_file, encoding="utf-8") as f:
                    tokens += [line.strip() for line in f if line.strip()]
            except OSError as exc:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Cannot read admin tokens file {tokens_file}: {exc.strerror}",
                ) from None
        return cls(tokens)

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None) -> None:
        """Raise UNAUTHENTICATED without a bearer token, PERMISSION_DENIED for a wrong one."""
        if not self._tokens:
            raise ServingError(
                Code.UNAVAILABLE,
                "The admin API is disabled: no admin tokens are configured "
                f"([admin] tokens_file or {self.ENV_VAR})",
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServingError(Code.UNAUTHENTICATED, "Missing bearer token for the admin API")
        candidate = token.strip().encode()
        # Compare against every token (no early exit) so timing says nothing about which.
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(candidate, known)
        if not matched:
            raise ServingError(Code.PERMISSION_DENIED, "Invalid admin token")


class PinState:
    """Pins persisted as JSON, written atomically (temp file + fsync + rename)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def load(self) -> dict[str, int]:
        if not self.path or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return {str(k): int(v) for k, v in data.get("pins", {}).items()}
        except (OSError, ValueError, AttributeError) as exc:
            log.error("Ignoring unreadable admin state file %s: %s", self.path, exc)
            return {}

    def save(self, pins: dict[str, int]) -> None:
        if not self.path:
            return
        write_json_atomically(
            self.path, {"pins": pins}, temp_prefix=".tfgate-state.", sort_keys=True
        )


class AdminApi:
    def __init__(
        self,
        registry: Registry,
        manager: VersionManager,
        discovery: Discovery,
        state: PinState,
        reload_config: Callable[[], Awaitable[None]],
        describe_extras: Callable[[str], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = registry
        self.manager = manager
        self.discovery = discovery
        self.state = state
        self._reload_config = reload_config
        # extra per-model fields from other components (sync status, cache hit ratio)
        self.describe_extras = describe_extras or (lambda name: {})
        self._lock = asyncio.Lock()

    def add_describe_extras(self, extras: Callable[[str], dict[str, Any]]) -> None:
        """Compose another component's per-model fields with those already registered
        (model sync, cache, ...): each adds its own keys, none replaces another's."""
        previous = self.describe_extras
        self.describe_extras = lambda name: {**previous(name), **extras(name)}

    # --- startup ---

    def restore_pins(self) -> None:
        """Apply persisted pins before the initial load, so a pinned version loads too."""
        for name, version in self.state.load().items():
            model = self.registry.models.get(name)
            if model is None:
                log.warning("Persisted pin for unknown model %s ignored", name)
                continue
            model.pinned = version
            log.info("Restored pin of model %s to version %d", name, version)

    # --- queries ---

    def list_models(self) -> dict[str, Any]:
        return {"models": [self.describe(name) for name in sorted(self.registry.models)]}

    def describe(self, name: str) -> dict[str, Any]:
        model = self._model(name)
        available = model.available_versions()
        serving = (
            model.pinned if model.pinned in available else (available[-1] if available else None)
        )
        versions = [
            {
                "version": r.version,
                "state": r.state.name,
                "error": None
                if r.error is None
                else {"code": r.error.code.name, "message": r.error.message},
                "on_disk": r.version in model.on_disk,
                "in_flight_requests": r.in_flight,
            }
            for r in sorted(model.versions.values(), key=lambda r: r.version)
        ]
        return {
            "name": name,
            "base_path": model.config.base_path,
            "policy": model.config.policy.describe(),
            "labels": dict(sorted(model.labels.items())),
            "pinned_version": model.pinned,
            "serving_version": serving,
            "versions_on_disk": sorted(model.on_disk),
            "forced_versions": sorted(model.forced),
            "excluded_versions": sorted(model.excluded),
            "versions": versions,
            "removed_from_config": name in self.registry.dropped,
            **self.describe_extras(name),
        }

    def _model(self, name: str) -> ModelRecord:
        model = self.registry.models.get(name)
        if model is None:
            raise ServingError(Code.NOT_FOUND, f"Model {name} is not configured")
        return model

    def _require_on_disk(self, model: ModelRecord, version: int) -> None:
        self.discovery.scan([model.name])
        if version not in model.on_disk:
            raise ServingError(
                Code.NOT_FOUND,
                f"Version {version} of model {model.name} is not on disk under "
                f"{model.config.base_path}",
            )

    # --- changes ---

    async def pin(self, name: str, version: int) -> dict[str, Any]:
        async with self._lock:
            model = self._model(name)
            self._require_on_disk(model, version)
            previous = model.pinned
            model.pinned = version
            model.excluded.discard(version)
            error = await self._apply_and_wait(model, version)
            if error is not None:
                model.pinned = previous
                self._apply(model)
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Cannot pin model {name} to version {version}: it failed to load: "
                    f"{error.message}",
                )
            self._save_pins()
            log.info("Pinned model %s to version %d", name, version)
            return self.describe(name)

    async def unpin(self, name: str) -> dict[str, Any]:
        async with self._lock:
            model = self._model(name)
            model.pinned = None
            self._apply(model)
            self._save_pins()
            log.info("Unpinned model %s; the version policy decides again", name)
            return self.describe(name)

    async def load_version(self, name: str, version: int) -> dict[str, Any]:
        async with self._lock:
            model = self._model(name)
            self._require_on_disk(model, version)
            model.excluded.discard(version)
            model.forced.add(version)
            error = await self._apply_and_wait(model, version)
            if error is not None:
                model.forced.discard(version)
                self._apply(model)
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Version {version} of model {name} failed to load: {error.message}",
                )
            return self.describe(name)

    async def unload_version(self, name: str, version: int) -> dict[str, Any]:
        async with self._lock:
            model = self._model(name)
            if model.pinned == version:
                raise ServingError(
                    Code.FAILED_PRECONDITION,
                    f"Version {version} of model {name} is pinned; unpin it first",
                )
            model.forced.discard(version)
            model.excluded.add(version)
            self._apply(model)
            await self.manager.wait_idle(name)
            return self.describe(name)

    async def reload_config(self) -> dict[str, Any]:
        async with self._lock:
            await self._reload_config()
            return self.list_models()

    def _apply(self, model: ModelRecord) -> None:
        self.registry.recompute_aspired(model.name)
        self.manager.reconcile(model.name)

    async def _apply_and_wait(self, model: ModelRecord, version: int) -> ServingError | None:
        """Re-aspire, then wait until `version` is AVAILABLE (None) or has failed (its error)."""
        record = model.versions.get(version)
        if record is not None and record.state is VersionState.END and record.error:
            del model.versions[version]  # an explicit request retries a failed version
        self._apply(model)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOAD_WAIT_SECONDS
        while loop.time() < deadline:
            record = model.versions.get(version)
            if record is not None and record.state is VersionState.AVAILABLE:
                return None
            if record is not None and record.state is VersionState.END and record.error:
                return record.error
            async with self.manager.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.manager.changed.wait(), 0.5)
        return ServingError(Code.DEADLINE_EXCEEDED, "Timed out waiting for the version to load")

    def _save_pins(self) -> None:
        pins = {n: m.pinned for n, m in self.registry.models.items() if m.pinned is not None}
        self.state.save(pins)  # type: ignore[arg-type]
