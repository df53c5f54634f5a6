"""Which BatchingParameters apply to a servable, from TF Serving's flags and files and the
tfgate TOML config; the batcher asks this for every request's servable.

Precedence: per-model [models.NAME.batching] in the TOML config, then the version's own
batching_params.pbtxt (with --enable_per_model_batching_parameters), then
--batching_parameters_file, then TF Serving's defaults. None means batching is off.
A version's batching_params.pbtxt is read before the version loads (the VersionManager calls
read_version_file), as TF Serving's SavedModel adapter does: a bad file fails that load.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from app import model_config
from app.batcher import BatchingParameters
from app.errors import Code, ServingError
from app.settings import Settings, SettingsError
from app.types import ServableId

VERSION_FILE = "batching_params.pbtxt"


class BatchingPolicy:
    """Callable: servable -> BatchingParameters, or None when batching is off for it."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.enable_batching
        self.per_model_files = settings.enable_per_model_batching_parameters
        self.global_params = (
            model_config.load_batching_parameters(settings.batching_parameters_file)
            if settings.batching_parameters_file
            # server.cc's defaults without a file, which name the pool differently
            else BatchingParameters(thread_pool_name="model_server_batch_threads")
        )
        self.overrides: dict[str, BatchingParameters] = {}
        for name, section in settings.config.get("models", {}).items():
            batching = section.get("batching")
            if batching:
                merged = dataclasses.replace(self.global_params, **_batching_fields(batching))
                model_config.validate_allowed_batch_sizes(
                    merged.allowed_batch_sizes, merged.max_batch_size
                )
                self.overrides[name] = merged
        # servable -> its version's batching_params.pbtxt (read before the version loaded)
        self._version_params: dict[ServableId, BatchingParameters] = {}

    def __call__(self, servable: ServableId) -> BatchingParameters | None:
        if servable.model in self.overrides:
            return self.overrides[servable.model]
        if not self.enabled:
            return None
        return self._version_params.get(servable, self.global_params)

    def read_version_file(self, servable: ServableId, version_path: str) -> None:
        """With --enable_per_model_batching_parameters, read and validate the version's
        batching_params.pbtxt; raises ServingError (the load fails) on a bad file."""
        if not (self.enabled and self.per_model_files) or servable.model in self.overrides:
            return
        path = os.path.join(version_path, VERSION_FILE)
        if not os.path.exists(path):
            self._version_params.pop(servable, None)
            return
        try:
            self._version_params[servable] = model_config.load_batching_parameters(path)
        except model_config.ConfigError as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None


def _batching_fields(section: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(BatchingParameters)}
    unknown = set(section) - known
    if unknown:
        raise SettingsError(f"unknown batching setting(s): {', '.join(sorted(unknown))}")
    fields = dict(section)
    if "allowed_batch_sizes" in fields:
        fields["allowed_batch_sizes"] = tuple(fields["allowed_batch_sizes"])
    return fields
