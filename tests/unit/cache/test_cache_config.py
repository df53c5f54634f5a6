"""app/cache/config.py and the Redis URL parser: valid configs resolve, invalid ones say why."""

from __future__ import annotations

from typing import Any

import pytest

from app.cache.config import load_cache_config
from app.cache.redis_client import RedisAddress, parse_redis_url
from app.settings.config_file import CACHE_DEFAULT_TTL_SECONDS, CacheTables, ConfigFile
from app.settings.settings import SettingsError

URL = "redis://127.0.0.1:6379/0"


def settings(config: dict[str, Any], cache_url: str = "") -> CacheTables:
    """The typed cache tables of a TOML document, validated as at startup."""
    return ConfigFile.parse(config, "tfgate.toml").cache_tables(cache_url)


def test_no_cache_section_means_off() -> None:
    assert load_cache_config(settings({})) is None
    assert load_cache_config(settings({"models": {"m": {"batching": {}}}})) is None


def test_full_config_resolves_per_model_defaults() -> None:
    config = load_cache_config(settings({
        "cache": {"url": URL, "timeout_ms": 5, "default_ttl_seconds": 60,
                  "max_entry_bytes": 4096, "breaker_failure_threshold": 3,
                  "breaker_reset_seconds": 0.5, "max_pending_stores": 10},
        "models": {
            "a": {"cache": {"enabled": True, "deterministic": True}},
            "b": {"cache": {"enabled": True, "deterministic": True, "ttl_seconds": 7,
                            "max_entry_bytes": 100}},
            "c": {"cache": {"enabled": False}},
            "d": {"batching": {"max_batch_size": 8}},
        },
    }))
    assert config is not None
    assert config.timeout_ms == 5.0
    assert config.breaker_failure_threshold == 3
    assert sorted(config.models) == ["a", "b"]
    assert (config.models["a"].ttl_seconds, config.models["a"].max_entry_bytes) == (60, 4096)
    assert (config.models["b"].ttl_seconds, config.models["b"].max_entry_bytes) == (7, 100)


def test_flag_sets_or_overrides_the_url() -> None:
    config = load_cache_config(settings({}, cache_url="redis://h:7000/2"))
    assert config is not None and config.address == RedisAddress(host="h", port=7000, db=2)
    config = load_cache_config(settings({"cache": {"url": URL}}, cache_url="redis://o:1/0"))
    assert config is not None and config.address.host == "o"
    assert config.models == {}
    assert config.default_ttl_seconds == CACHE_DEFAULT_TTL_SECONDS


def _model(**cache: Any) -> dict[str, Any]:
    return {"cache": {"url": URL}, "models": {"m": {"cache": cache}}}


INVALID = [
    ("unknown global key", {"cache": {"url": URL, "ttl": 5}}, "unknown setting(s) ttl"),
    ("string timeout", {"cache": {"url": URL, "timeout_ms": "20"}}, "timeout_ms must be a number"),
    ("zero timeout", {"cache": {"url": URL, "timeout_ms": 0}}, "greater than 0"),
    ("bool as int", {"cache": {"url": URL, "default_ttl_seconds": True}}, "must be an integer"),
    ("float ttl", {"cache": {"url": URL, "default_ttl_seconds": 1.5}}, "must be an integer"),
    ("bad scheme", {"cache": {"url": "http://x"}}, "unsupported cache URL scheme"),
    ("bad scheme message", {"cache": {"url": "tcp://x"}}, "use redis://, rediss:// (TLS)"),
    ("bad db", {"cache": {"url": "redis://x/abc"}}, "invalid database number"),
    ("bad port", {"cache": {"url": "redis://x:99999"}}, "invalid port"),
    ("not a table", {"cache": {"url": URL}, "models": {"m": {"cache": 1}}}, "must be a table"),
    ("unknown model key", _model(enabled=True, deterministic=True, ttl=1), "unknown setting"),
    ("enabled as string", _model(enabled="yes"), "must be true or false"),
    ("not deterministic", _model(enabled=True), "deterministic = true"),
    ("explicitly nondeterministic", _model(enabled=True, deterministic=False), "deterministic"),
    ("negative ttl", _model(enabled=True, deterministic=True, ttl_seconds=-1), "greater than 0"),
    ("no url", {"models": {"m": {"cache": {"enabled": True, "deterministic": True}}}},
     "caching is enabled for m but no cache URL"),
]


@pytest.mark.parametrize(("what", "config", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_configs(what: str, config: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=r"tfgate\.toml") as info:
        load_cache_config(settings(config))
    assert message in str(info.value)


URLS = [
    ("redis://127.0.0.1:6379/0", RedisAddress("127.0.0.1", 6379)),
    ("redis://localhost", RedisAddress("localhost", 6379)),
    ("redis://:s3cret@h:1/3", RedisAddress("h", 1, db=3, password="s3cret")),
    ("redis://user:p%40ss@h/0", RedisAddress("h", 6379, username="user", password="p@ss")),
    ("redis://h?db=4", RedisAddress("h", 6379, db=4)),
    ("unix:///run/redis.sock?db=2", RedisAddress(unix_path="/run/redis.sock", db=2)),
    ("rediss://h:6380/1", RedisAddress("h", 6380, db=1, tls=True)),
    ("rediss://:pw@h?ssl_ca_certs=/etc/ca.pem",
     RedisAddress("h", 6379, password="pw", tls=True, ca_certs="/etc/ca.pem")),
    ("redis://h?ssl_ca_certs=/etc/ca.pem", RedisAddress("h", 6379)),  # TLS only with rediss
]


@pytest.mark.parametrize(("url", "address"), URLS)
def test_parse_redis_url(url: str, address: RedisAddress) -> None:
    assert parse_redis_url(url) == address


def test_describe_never_shows_the_password() -> None:
    assert "s3cret" not in parse_redis_url("redis://:s3cret@h:1/3").describe()
    assert parse_redis_url("rediss://:s3cret@h:1/3").describe() == "h:1 db 3 (TLS)"
