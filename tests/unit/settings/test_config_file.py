"""app/settings/config_file.py: the typed TOML tables. Valid files give typed values with
their defaults; each invalid value stops with a message naming table, key and file; flags
override the file; the environment is read by settings only."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest

from app.settings.commands import parse_publish_args, parse_sync_args
from app.settings.config_file import (
    ADMIN_LOAD_WAIT_SECONDS,
    BatchingTable,
    ConfigFile,
    ConfigFileError,
)
from app.settings.model_config import BatchingParameters
from app.settings.settings import SettingsError, load_settings

FULL = """
[server]
rest_api_port = 8601
enable_batching = true

[admin]
tokens_file = "/etc/tfgate/admin_tokens"
state_file = "/var/lib/tfgate/state.json"
load_wait_seconds = 30
port = 8502
host = "0.0.0.0"

[auth]
api_keys_file = "/etc/tfgate/api_keys"

[cache]
url = "redis://127.0.0.1:6379/0"
timeout_ms = 5

[models.a.cache]
enabled = true
deterministic = true
ttl_seconds = 60

[models.a.batching]
max_batch_size = 8
allowed_batch_sizes = [4, 8]

[models.b.sync]
source = "s3://bucket/models/b"
poll_seconds = 10
endpoints = []
"""


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "tfgate.toml"
    path.write_text(text)
    return path


def test_a_full_file_gives_typed_tables(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, FULL)
    settings = load_settings([f"--config={path}", "--model_base_path=/m"], environ={})
    assert (settings.rest_api_port, settings.enable_batching) == (8601, True)
    admin = settings.admin
    assert (admin.tokens_file, admin.state_file) == ("/etc/tfgate/admin_tokens",
                                                     "/var/lib/tfgate/state.json")
    assert (admin.load_wait_seconds, admin.port, admin.host) == (30.0, 8502, "0.0.0.0")
    assert isinstance(admin.load_wait_seconds, float)
    assert settings.auth.api_keys_file == "/etc/tfgate/api_keys"
    assert settings.cache is not None
    assert settings.cache.url == "redis://127.0.0.1:6379/0"
    assert settings.cache.table.timeout_ms == 5.0
    assert settings.cache.table.default_ttl_seconds == 300  # default
    assert list(settings.cache.models) == ["a"] and settings.cache.models["a"].ttl_seconds == 60
    assert settings.batching_tables["a"].fields_set() == {
        "allowed_batch_sizes": (4, 8), "max_batch_size": 8}
    sync = settings.sync_tables["b"]
    assert (sync.source, sync.poll_seconds, sync.retry_max, sync.backups_to_keep) == (
        "s3://bucket/models/b", 10.0, 10.0, 2)
    assert settings.warnings == ()


def test_no_file_means_defaults() -> None:
    settings = load_settings(["--model_base_path=/m"], environ={})
    assert settings.admin.load_wait_seconds == ADMIN_LOAD_WAIT_SECONDS
    assert (settings.admin.port, settings.admin.host) == (0, "127.0.0.1")
    assert settings.auth.api_keys_file == ""
    assert settings.sync_tables == {} and settings.batching_tables == {}
    assert settings.cache is not None and settings.cache.url == ""


def test_flags_override_the_file(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, '[server]\nport = 9100\n[cache]\nurl = "redis://file:1/0"\n')
    settings = load_settings([f"--config={path}", "--model_base_path=/m", "--port=9200",
                              "--cache_url=redis://flag:2/0"], environ={})
    assert settings.port == 9200
    assert settings.cache is not None and settings.cache.url == "redis://flag:2/0"


def test_flags_are_typed_and_checked_on_assignment() -> None:
    settings = load_settings(["--model_base_path=/m"], environ={})
    assert isinstance(settings.port, int) and isinstance(settings.enable_batching, bool)
    settings.flags.rest_max_connections = 7
    assert settings.rest_max_connections == 7
    with pytest.raises(ValueError, match="valid integer"):
        settings.flags.rest_max_connections = "many"
    with pytest.raises(AttributeError):
        settings.no_such_flag  # noqa: B018


def test_admin_tokens_env_is_read_by_settings() -> None:
    settings = load_settings(["--model_base_path=/m"],
                             environ={"TFGATE_ADMIN_TOKENS": " a, b ,,"})
    assert settings.admin_env_tokens == ("a", "b")
    assert load_settings(["--model_base_path=/m"], environ={}).admin_env_tokens == ()


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("admin wait zero", {"admin": {"load_wait_seconds": 0}},
     "[admin] load_wait_seconds must be a positive number of seconds, got 0"),
    ("admin wait string", {"admin": {"load_wait_seconds": "60"}},
     "[admin] load_wait_seconds must be a positive number of seconds, got '60'"),
    ("admin port string", {"admin": {"port": "8502"}}, "[admin]: port must be an integer"),
    ("admin port range", {"admin": {"port": 70000}}, "[admin]: port must be <= 65535"),
    ("admin host", {"admin": {"host": 1}}, "[admin]: host must be a string, got 1"),
    ("admin not a table", {"admin": 3}, "[admin]: must be a table"),
    ("auth keys file", {"auth": {"api_keys_file": True}}, "[auth]: api_keys_file must be a string"),
    ("cache unknown", {"cache": {"ttl": 1}}, "[cache]: unknown setting(s) ttl; known: "),
    ("cache type", {"cache": {"timeout_ms": "5"}}, "[cache]: timeout_ms must be a number, got '5'"),
    ("cache bool", {"cache": {"max_pending_stores": True}},
     "[cache]: max_pending_stores must be an integer, got True"),
    ("cache zero", {"cache": {"breaker_reset_seconds": 0}},
     "[cache]: breaker_reset_seconds must be greater than 0, got 0"),
    ("models not a table", {"models": []}, "[models] must be a table of model names"),
    ("model not a table", {"models": {"m": 1}}, "[models.m]: must be a table"),
    ("model cache nondeterministic", {"models": {"m": {"cache": {"enabled": True}}}},
     "[models.m.cache]: enables caching but does not set deterministic = true"),
    ("sync no source", {"models": {"m": {"sync": {"poll_seconds": 5}}}},
     "[models.m.sync]: source is required"),
    ("sync negative bandwidth",
     {"models": {"m": {"sync": {"source": "s3://b/m", "bandwidth_bytes_per_second": -1}}}},
     "[models.m.sync]: bandwidth_bytes_per_second must be >= 0, got -1"),
    ("sync retry", {"models": {"m": {"sync": {"source": "s3://b/m", "retry_max_seconds": 0}}}},
     "[models.m.sync]: retry_max_seconds must be > 0, got 0"),
    ("batching unknown", {"models": {"m": {"batching": {"max_batch": 8}}}},
     "[models.m.batching]: unknown batching setting(s): max_batch"),
    ("batching type", {"models": {"m": {"batching": {"max_batch_size": "8"}}}},
     "[models.m.batching]: max_batch_size must be an integer, got '8'"),
    ("batching sizes", {"models": {"m": {"batching": {"allowed_batch_sizes": ["4"]}}}},
     "[models.m.batching]: allowed_batch_sizes must be an integer, got '4'"),
    ("batching zero", {"models": {"m": {"batching": {"max_batch_size": 0}}}},
     "[models.m.batching]: max_batch_size must be greater than 0, got 0"),
]


@pytest.mark.parametrize(("what", "document", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_tables_name_table_key_and_file(what: str, document: dict, message: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        ConfigFile.parse(document, "/etc/tfgate/tfgate.toml")
    assert message in str(info.value)
    assert str(info.value).endswith("(in /etc/tfgate/tfgate.toml)")


def test_invalid_file_stops_load_settings_without_usage(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "[cache]\ntimeout_ms = -1\n")
    with pytest.raises(ConfigFileError, match=r"\[cache\]: timeout_ms must be greater than 0"):
        load_settings([f"--config={path}", "--model_base_path=/m"], environ={})
    # a flag error is a SettingsError but not a file error (serve() prints the usage for it)
    with pytest.raises(SettingsError) as info:
        load_settings(["--port=x", "--model_base_path=/m"], environ={})
    assert not isinstance(info.value, ConfigFileError)


def test_unknown_keys_outside_strict_tables_are_warned_and_ignored(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, '[admin]\ntoken_file = "x"\n[metrics]\nx = 1\n'
                           "[models.m.other]\nx = 1\n")
    settings = load_settings([f"--config={path}", "--model_base_path=/m"], environ={})
    assert settings.warnings == (
        f"{path}: unknown setting [metrics] ignored",
        f"{path}: unknown setting [admin] token_file ignored",
        f"{path}: unknown setting [models.m.other] ignored",
    )
    assert settings.admin.tokens_file == ""


def test_empty_batching_table_overrides_nothing() -> None:
    file = ConfigFile.parse({"models": {"m": {"batching": {}}}}, "t.toml")
    assert file.batching_tables() == {}


def test_batching_table_has_the_batching_parameters_fields() -> None:
    assert set(BatchingTable.model_fields) == {
        f.name for f in dataclasses.fields(BatchingParameters)}


def test_publish_args_take_the_endpoint_from_the_environment() -> None:
    args = parse_publish_args(["/v/3", "s3://b/m/3", "--endpoints=h:1,h:2"],
                              environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert (args.endpoint_url, args.endpoints, args.timeout_seconds) == (
        "http://127.0.0.1:9000", ("h:1", "h:2"), 60.0)
    flagged = parse_publish_args(["/v/3", "s3://b/m/3", "--endpoint_url=http://x:1"],
                                 environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert flagged.endpoint_url == "http://x:1"


def test_sync_args(tmp_path: pathlib.Path) -> None:
    assert parse_sync_args(["--help"]).help
    path = write(tmp_path, '[models.m.sync]\nsource = "s3://b/m"\n')
    args = parse_sync_args(["--once", "--model=m", f"--config={path}", "--model_base_path=/m"],
                           environ={})
    assert (args.help, args.once, args.models) == (False, True, frozenset({"m"}))
    assert args.settings is not None and list(args.settings.sync_tables) == ["m"]


# Runtime environment, not configuration: where each remaining reader is and why it stays.
ENVIRONMENT_READERS = {
    "app/__main__.py",  # the CLI entry passes sys.argv in; XDG_CACHE_HOME: the demo model's home
    "app/main.py",  # CUDA_VISIBLE_DEVICES: which GPUs this process sees (hardware, not a setting)
    "app/runtime/worker.py",  # the worker subprocess inherits the environment (TF reads it)
    "app/sync/storage.py",  # HADOOP_HOME / ARROW_LIBHDFS_DIR: where libhdfs is, as pyarrow looks
}
CONFIG_READERS = ("os.environ", "os.getenv", "sys.argv", "argparse", "tomllib", ".config.get(")


def test_only_settings_reads_argv_env_and_the_config_file() -> None:
    root = pathlib.Path(__file__).resolve().parents[3]
    offenders = []
    for path in sorted((root / "app").rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name.startswith("app/settings/") or name in ENVIRONMENT_READERS:
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{name}: {what}" for what in CONFIG_READERS if what in text]
    assert offenders == []
