"""`[models.NAME.sync]` tables of the tfgate TOML -> validated SyncConfig, one per model.

Lifecycle position: read at startup (main.py) and on every model config reload
(ServerCore), which passes the model config's base paths; a table that is invalid for them
rejects the start or the reload. Pure: no I/O besides checking the source's URL.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from app.settings.settings import SettingsError
from app.sync.storage import SourceOptions, check_source
from app.sync.sync_pass import SyncConfig

_SOURCE_KEYS = {
    "source": str,
    "endpoints": list,
    "endpoint_url": str,
    "region_name": str,
    "aws_access_key_id": str,
    "aws_secret_access_key": str,
    "user": str,
    "timeout_seconds": float,
}
_SYNC_KEYS = {
    **_SOURCE_KEYS,
    "poll_seconds": float,
    "bandwidth_bytes_per_second": float,
    "mirror_deletes": bool,
    "backups_to_keep": int,
    "webhook_url": str,
    "retry_initial_seconds": float,
    "retry_max_seconds": float,
}


_KIND_NAMES = {
    float: "a number",
    int: "an integer",
    bool: "true or false",
    str: "a string",
    list: "a list",
}


def sync_table_models(config: Mapping[str, Any]) -> list[str]:
    """The model names that have a `[models.NAME.sync]` table."""
    return [
        name
        for name, section in config.get("models", {}).items()
        if isinstance(section, dict) and "sync" in section
    ]


def load_sync_configs(config: Mapping[str, Any], base_paths: Mapping[str, str]) -> list[SyncConfig]:
    """The `[models.NAME.sync]` tables of the models in `base_paths` (the model config now),
    validated; SettingsError names the table at fault. Tables of models not configured yet are
    validated too but give no SyncConfig: a model config reload that adds the model starts
    its sync (ModelSync.update)."""
    configs = []
    for name in sync_table_models(config):
        try:
            base_path = base_paths.get(name)
            sync = _sync_config(name, config["models"][name]["sync"], base_path or "")
            if base_path is not None:
                configs.append(sync)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"[models.{name}.sync]: {exc}") from None
    return configs


def _typed(section: Mapping[str, Any], key: str, default: Any) -> Any:
    kind = _SYNC_KEYS[key]
    value = section.get(key, default)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:  # TOML writes 30 and 30.0 differently; both are fine
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise TypeError(f"{key} must be {_KIND_NAMES[kind]}")
    return float(value) if kind is float else value


def _sync_config(name: str, section: Any, base_path: str) -> SyncConfig:
    if not isinstance(section, dict):
        raise TypeError("must be a table")
    unknown = sorted(set(section) - set(_SYNC_KEYS))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
    if "://" in base_path:
        raise ValueError(
            f"the model's base_path {base_path!r} must be a local directory: sync "
            "downloads from `source` into it"
        )
    if not section.get("source"):
        raise ValueError("source is required (s3://, webhdfs://, hdfs:// or file:// URL)")
    endpoints = _typed(section, "endpoints", [])
    if not all(isinstance(e, str) for e in endpoints):
        raise TypeError("endpoints must be a list of HOST:PORT strings")
    options = SourceOptions(
        url=_typed(section, "source", ""),
        timeout_seconds=_typed(section, "timeout_seconds", 30.0),
        endpoints=tuple(endpoints),
        endpoint_url=_typed(section, "endpoint_url", ""),
        region_name=_typed(section, "region_name", ""),
        aws_access_key_id=_typed(section, "aws_access_key_id", ""),
        aws_secret_access_key=_typed(section, "aws_secret_access_key", ""),
        user=_typed(section, "user", ""),
    )
    check_source(options)
    poll = _typed(section, "poll_seconds", 30.0)
    config = SyncConfig(
        model=name,
        base_path=base_path,
        source=options,
        poll_seconds=poll,
        bandwidth_bytes_per_second=_typed(section, "bandwidth_bytes_per_second", 0.0),
        mirror_deletes=_typed(section, "mirror_deletes", False),
        backups_to_keep=_typed(section, "backups_to_keep", 2),
        webhook_url=_typed(section, "webhook_url", ""),
        retry_initial_seconds=_typed(section, "retry_initial_seconds", 1.0),
        retry_max_seconds=_typed(section, "retry_max_seconds", poll),
    )
    for key in ("poll_seconds", "retry_initial_seconds", "retry_max_seconds"):
        if getattr(config, key) <= 0:
            raise ValueError(f"{key} must be > 0")
    if config.bandwidth_bytes_per_second < 0 or config.backups_to_keep < 0:
        raise ValueError("bandwidth_bytes_per_second and backups_to_keep must be >= 0")
    if config.webhook_url and urllib.parse.urlsplit(config.webhook_url).scheme not in (
        "http",
        "https",
    ):
        raise ValueError(f"webhook_url {config.webhook_url!r} must be an http(s) URL")
    return config
