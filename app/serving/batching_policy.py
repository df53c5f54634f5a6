"""Which BatchingParameters apply to a servable, from the SessionBundleConfig
(app/settings/session_bundle.py: TF Serving's flags or --platform_config_file), the version
directories and the tfgate TOML config's typed [models.NAME.batching] tables
(app/settings/config_file.py); the batcher asks this for every request's servable.

Precedence: per-model [models.NAME.batching] in the TOML config, then the version's own
batching_params.pbtxt (with --enable_per_model_batching_parameters), then
--batching_parameters_file (or the platform config's batching_parameters), then TF Serving's
defaults. None means batching is off.
A version's batching_params.pbtxt is read before the version loads (the VersionManager calls
read_version_file), as TF Serving's SavedModel adapter does: a bad file fails that load.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from app.core.errors import Code, ServingError
from app.core.types import ServableId
from app.settings import model_config
from app.settings.config_file import BatchingTable
from app.settings.model_config import BatchingParameters
from app.settings.session_bundle import SessionBundleSettings

VERSION_FILE = "batching_params.pbtxt"


class BatchingPolicy:
    """Callable: servable -> BatchingParameters, or None when batching is off for it."""

    def __init__(
        self, bundle: SessionBundleSettings, model_tables: Mapping[str, BatchingTable]
    ) -> None:
        """`model_tables`: the config file's [models.NAME.batching] tables that set fields
        (Settings.batching_tables)."""
        self.enabled = bundle.batching is not None
        self.per_model_files = bundle.per_model_batching
        # With batching off only the TOML overrides batch, on top of server.cc's defaults.
        self.global_params = bundle.batching or BatchingParameters(
            thread_pool_name="model_server_batch_threads"
        )
        self.overrides: dict[str, BatchingParameters] = {}
        for name, table in model_tables.items():
            merged = dataclasses.replace(self.global_params, **table.fields_set())
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

