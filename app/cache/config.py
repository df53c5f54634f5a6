"""The result cache's configuration: the typed `[cache]` and `[models.NAME.cache]` tables
(validated by app/settings/config_file.py, `--cache_url` already applied) -> CacheConfig,
with the Redis URL parsed.

Off the request path: main.build_server() calls load_cache_config() once; None means the
cache is off. Example:

    [cache]
    url = "redis://127.0.0.1:6379/0"
    timeout_ms = 20

    [models.dnn.cache]
    enabled = true
    deterministic = true   # required: only pure functions of their input rows are cached
    ttl_seconds = 600
"""

from __future__ import annotations

import dataclasses

from app.cache.redis_client import RedisAddress, parse_redis_url
from app.settings.config_file import (
    CACHE_DEFAULT_BREAKER_FAILURES,
    CACHE_DEFAULT_BREAKER_RESET_SECONDS,
    CACHE_DEFAULT_MAX_ENTRY_BYTES,
    CACHE_DEFAULT_MAX_PENDING_STORES,
    CACHE_DEFAULT_TIMEOUT_MS,
    CACHE_DEFAULT_TTL_SECONDS,
    CacheTables,
    ConfigFileError,
)


@dataclasses.dataclass(frozen=True)
class ModelCacheConfig:
    ttl_seconds: int
    max_entry_bytes: int


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    url: str
    address: RedisAddress
    timeout_ms: float = CACHE_DEFAULT_TIMEOUT_MS
    default_ttl_seconds: int = CACHE_DEFAULT_TTL_SECONDS
    max_entry_bytes: int = CACHE_DEFAULT_MAX_ENTRY_BYTES
    breaker_failure_threshold: int = CACHE_DEFAULT_BREAKER_FAILURES
    breaker_reset_seconds: float = CACHE_DEFAULT_BREAKER_RESET_SECONDS
    # Background SETs in flight at once; past this, results are not stored (never queued
    # without bound behind a slow Redis).
    max_pending_stores: int = CACHE_DEFAULT_MAX_PENDING_STORES
    models: dict[str, ModelCacheConfig] = dataclasses.field(default_factory=dict)


def load_cache_config(tables: CacheTables) -> CacheConfig | None:
    """The cache config, or None when no cache URL is set (cache off). The tables are
    validated already; what is left is the URL, whose syntax is the Redis client's."""
    if not tables.url:
        return None
    try:
        address = parse_redis_url(tables.url)
    except ValueError as exc:
        raise ConfigFileError(f"[cache]: url: {exc} (in {tables.source})") from None
    table = tables.table
    return CacheConfig(
        tables.url,
        address,
        timeout_ms=table.timeout_ms,
        default_ttl_seconds=table.default_ttl_seconds,
        max_entry_bytes=table.max_entry_bytes,
        breaker_failure_threshold=table.breaker_failure_threshold,
        breaker_reset_seconds=table.breaker_reset_seconds,
        max_pending_stores=table.max_pending_stores,
        models={
            name: ModelCacheConfig(
                ttl_seconds=model.ttl_seconds or table.default_ttl_seconds,
                max_entry_bytes=model.max_entry_bytes or table.max_entry_bytes,
            )
            for name, model in tables.models.items()
        },
    )
