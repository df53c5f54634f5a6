"""The result cache's configuration: `[cache]` and `[models.NAME.cache]` in the tfgate TOML
config (plus the `--cache_url` flag), validated at startup with messages naming the key.

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
from typing import Any

from app.cache.redis_client import RedisAddress, parse_redis_url
from app.settings.settings import Settings, SettingsError

DEFAULT_TIMEOUT_MS = 20.0
DEFAULT_TTL_SECONDS = 300
DEFAULT_MAX_ENTRY_BYTES = 1 << 20
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_RESET_SECONDS = 1.0
DEFAULT_MAX_PENDING_STORES = 1024


@dataclasses.dataclass(frozen=True)
class ModelCacheConfig:
    ttl_seconds: int
    max_entry_bytes: int


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    url: str
    address: RedisAddress
    timeout_ms: float = DEFAULT_TIMEOUT_MS
    default_ttl_seconds: int = DEFAULT_TTL_SECONDS
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    breaker_failure_threshold: int = DEFAULT_BREAKER_FAILURES
    breaker_reset_seconds: float = DEFAULT_BREAKER_RESET_SECONDS
    # Background SETs in flight at once; past this, results are not stored (never queued
    # without bound behind a slow Redis).
    max_pending_stores: int = DEFAULT_MAX_PENDING_STORES
    models: dict[str, ModelCacheConfig] = dataclasses.field(default_factory=dict)


_GLOBAL_KEYS = {
    "url": str,
    "timeout_ms": float,
    "default_ttl_seconds": int,
    "max_entry_bytes": int,
    "breaker_failure_threshold": int,
    "breaker_reset_seconds": float,
    "max_pending_stores": int,
}
_MODEL_KEYS = {"enabled": bool, "deterministic": bool, "ttl_seconds": int, "max_entry_bytes": int}


def _typed(where: str, key: str, value: Any, kind: type) -> Any:
    """TOML value -> the expected type, rejecting bools posing as numbers and vice versa."""
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{where} {key} must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise SettingsError(f"{where} {key} must be a string, got {value!r}")
        return value
    numeric = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, numeric):
        expected = "a number" if kind is float else "an integer"
        raise SettingsError(f"{where} {key} must be {expected}, got {value!r}")
    if value <= 0:
        raise SettingsError(f"{where} {key} must be greater than 0, got {value!r}")
    return kind(value)


def _section(where: str, section: Any, known: dict[str, type]) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise SettingsError(f"{where} must be a table")
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise SettingsError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return {key: _typed(where, key, value, known[key]) for key, value in section.items()}


def load_cache_config(settings: Settings) -> CacheConfig | None:
    """The validated cache config, or None when no cache URL is set (cache off)."""
    source = settings.flags.get("config") or "config"
    values = _section(f"{source}: [cache]", settings.config.get("cache", {}), _GLOBAL_KEYS)
    url = settings.flags.get("cache_url") or values.pop("url", "")
    values.pop("url", None)
    models = _model_sections(source, settings.config.get("models", {}))
    if not url:
        if models:
            names = ", ".join(sorted(models))
            raise SettingsError(
                f"{source}: caching is enabled for {names} but no cache URL is set "
                "([cache] url or --cache_url)"
            )
        return None
    try:
        address = parse_redis_url(url)
    except ValueError as exc:
        raise SettingsError(f"{source}: [cache] url: {exc}") from None
    base = CacheConfig(url, address, **values)
    resolved = {
        name: ModelCacheConfig(
            ttl_seconds=section.get("ttl_seconds", base.default_ttl_seconds),
            max_entry_bytes=section.get("max_entry_bytes", base.max_entry_bytes),
        )
        for name, section in models.items()
    }
    return dataclasses.replace(base, models=resolved)


def _model_sections(source: str, models: Any) -> dict[str, dict[str, Any]]:
    """[models.NAME.cache] sections that enable caching, validated."""
    enabled: dict[str, dict[str, Any]] = {}
    if not isinstance(models, dict):
        raise SettingsError(f"{source}: [models] must be a table of model names")
    for name, model_section in models.items():
        if not isinstance(model_section, dict) or "cache" not in model_section:
            continue
        where = f"{source}: [models.{name}.cache]"
        section = _section(where, model_section["cache"], _MODEL_KEYS)
        if not section.get("enabled", False):
            continue
        if not section.get("deterministic", False):
            raise SettingsError(
                f"{where} enables caching but does not set deterministic = true: only models "
                "whose output for a row depends on nothing but that row are cached (no "
                "randomness, no dependence on the other rows of a batch)"
            )
        enabled[name] = section
    return enabled
