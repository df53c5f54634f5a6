"""The typed `[models.NAME.sync]` tables (validated by app/settings/config_file.py) + the
model config's base paths -> SyncConfig, one per synced model.

Lifecycle position: read at startup (main.py) and on every model config reload
(ServerCore), which passes the model config's base paths; a table that cannot work with
them (a remote base_path, a source this install has no driver for) rejects the start or the
reload. Pure: no I/O besides checking the source's URL.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.settings.config_file import SyncTable
from app.settings.settings import SettingsError
from app.sync.storage import SourceOptions, check_source
from app.sync.sync_pass import SyncConfig


def load_sync_configs(
    tables: Mapping[str, SyncTable], base_paths: Mapping[str, str], config_file: str = ""
) -> list[SyncConfig]:
    """The sync tables of the models in `base_paths` (the model config now) as SyncConfigs;
    SettingsError names the table at fault. Tables of models not configured yet are
    checked too but give no SyncConfig: a model config reload that adds the model starts
    its sync (ModelSync.update)."""
    configs = []
    for name, table in tables.items():
        try:
            base_path = base_paths.get(name)
            sync = _sync_config(name, table, base_path or "")
            if base_path is not None:
                configs.append(sync)
        except ValueError as exc:
            where = f" (in {config_file})" if config_file else ""
            raise SettingsError(f"[models.{name}.sync]: {exc}{where}") from None
    return configs


def _sync_config(name: str, table: SyncTable, base_path: str) -> SyncConfig:
    if "://" in base_path:
        raise ValueError(
            f"the model's base_path {base_path!r} must be a local directory: sync "
            "downloads from `source` into it"
        )
    options = SourceOptions(
        url=table.source,
        timeout_seconds=table.timeout_seconds,
        endpoints=tuple(table.endpoints),
        endpoint_url=table.endpoint_url,
        region_name=table.region_name,
        aws_access_key_id=table.aws_access_key_id,
        aws_secret_access_key=table.aws_secret_access_key,
        user=table.user,
    )
    check_source(options)
    return SyncConfig(
        model=name,
        base_path=base_path,
        source=options,
        poll_seconds=table.poll_seconds,
        bandwidth_bytes_per_second=table.bandwidth_bytes_per_second,
        mirror_deletes=table.mirror_deletes,
        backups_to_keep=table.backups_to_keep,
        webhook_url=table.webhook_url,
        retry_initial_seconds=table.retry_initial_seconds,
        retry_max_seconds=table.retry_max,
    )
