"""The tfgate TOML config file (`--config`) -> typed, validated tables: the schema of every
table tfgate reads, and the one place their values are checked.

Off the data path: settings.load_settings() parses the file once at startup (and `tfgate
sync` does the same); the other folders receive the typed tables they need (the admin
table, the cache tables, the sync tables, the batching overrides), never the raw TOML.
Values are strict (TOML's `30` is not `"30"`; a boolean is not a number); an invalid value
stops startup with a message that names the table, the key and the file. Tables whose
unknown keys were always rejected ([cache], [models.NAME.cache|sync|batching]) still are;
elsewhere unknown keys and tables are reported as warnings and ignored, as before.

    [server]                 any tensorflow_model_server flag (settings.py converts them)
    [admin]                  AdminTable
    [auth]                   AuthTable
    [cache]                  CacheTable
    [models.NAME.cache]      ModelCacheTable
    [models.NAME.sync]       SyncTable
    [models.NAME.batching]   BatchingTable
    [models.NAME.traffic]    a traffic rule: kept as a table here, validated by main.py with
                             app/traffic/rules.py (settings sits below traffic/)
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

# Environment variable with comma-separated admin tokens (besides [admin] tokens_file).
ADMIN_TOKENS_ENV = "TFGATE_ADMIN_TOKENS"
# How long a pin, an explicit load or a config reload waits for its versions by default.
ADMIN_LOAD_WAIT_SECONDS = 600.0

CACHE_DEFAULT_TIMEOUT_MS = 20.0
CACHE_DEFAULT_TTL_SECONDS = 300
CACHE_DEFAULT_MAX_ENTRY_BYTES = 1 << 20
CACHE_DEFAULT_BREAKER_FAILURES = 5
CACHE_DEFAULT_BREAKER_RESET_SECONDS = 1.0
CACHE_DEFAULT_MAX_PENDING_STORES = 1024


class SettingsError(Exception):
    """A flag or config file is invalid; the message is what the user sees."""


class ConfigFileError(SettingsError):
    """The --config file's contents are invalid (not a flag: no usage text after it)."""


class _Table(BaseModel):
    """A TOML table: strict types, frozen. Subclasses that always rejected unknown keys set
    `reject_unknown`; the others keep them in `model_extra` and the loader warns."""

    model_config = ConfigDict(strict=True, frozen=True, extra="allow")
    reject_unknown: ClassVar[str] = ""  # "" or the message's lead ("unknown setting(s)")
    list_known: ClassVar[bool] = False  # name the known keys in the unknown-key message
    greater_than: ClassVar[str] = "must be greater than {gt}"  # wording of gt= violations

    @pydantic.model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("must be a table")
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown and cls.reject_unknown:
            known = f"; known: {', '.join(sorted(cls.model_fields))}" if cls.list_known else ""
            raise ValueError(f"{cls.reject_unknown} {', '.join(unknown)}{known}")
        return data


class AdminTable(_Table):
    """[admin]: the admin API (docs/operations.md)."""

    tokens_file: str = ""  # one bearer token per line
    state_file: str = ""  # pins persisted here
    load_wait_seconds: float = ADMIN_LOAD_WAIT_SECONDS
    port: int = Field(0, ge=0, le=65535)  # 0: served on the REST port
    host: str = "127.0.0.1"

    @pydantic.field_validator("load_wait_seconds", mode="wrap")
    @classmethod
    def _positive_seconds(cls, value: Any, handler: Any) -> float:
        # The text main.py has always given for this key.
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if not ok:
            raise ValueError(
                f"[admin] load_wait_seconds must be a positive number of seconds, got {value!r}"
            )
        return float(handler(value))


class AuthTable(_Table):
    """[auth]: inference API keys (serving/auth.py)."""

    api_keys_file: str = ""


class CacheTable(_Table):
    """[cache]: the Redis result cache (docs/cache.md)."""

    reject_unknown = "unknown setting(s)"
    list_known = True

    url: str = ""
    timeout_ms: float = Field(CACHE_DEFAULT_TIMEOUT_MS, gt=0)
    default_ttl_seconds: int = Field(CACHE_DEFAULT_TTL_SECONDS, gt=0)
    max_entry_bytes: int = Field(CACHE_DEFAULT_MAX_ENTRY_BYTES, gt=0)
    breaker_failure_threshold: int = Field(CACHE_DEFAULT_BREAKER_FAILURES, gt=0)
    breaker_reset_seconds: float = Field(CACHE_DEFAULT_BREAKER_RESET_SECONDS, gt=0)
    # Background SETs in flight at once; past this, results are not stored.
    max_pending_stores: int = Field(CACHE_DEFAULT_MAX_PENDING_STORES, gt=0)


class ModelCacheTable(_Table):
    """[models.NAME.cache]: caching of one model; None values default to [cache]'s."""

    reject_unknown = "unknown setting(s)"
    list_known = True

    enabled: bool = False
    deterministic: bool = False
    ttl_seconds: int | None = Field(None, gt=0)
    max_entry_bytes: int | None = Field(None, gt=0)

    @pydantic.model_validator(mode="after")
    def _only_deterministic_models(self) -> ModelCacheTable:
        if self.enabled and not self.deterministic:
            raise ValueError(
                "enables caching but does not set deterministic = true: only models "
                "whose output for a row depends on nothing but that row are cached (no "
                "randomness, no dependence on the other rows of a batch)"
            )
        return self


class SyncTable(_Table):
    """[models.NAME.sync]: model sync from remote storage (docs/model-sync.md). Whether the
    source's scheme is usable here (drivers, libhdfs) is sync/'s check, not the file's."""

    reject_unknown = "unknown setting(s)"
    greater_than = "must be > {gt}"

    source: str = Field("", validate_default=True)
    endpoints: list[str] = []
    endpoint_url: str = ""
    region_name: str = ""
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    user: str = ""
    timeout_seconds: float = Field(30.0, gt=0)
    poll_seconds: float = Field(30.0, gt=0)
    bandwidth_bytes_per_second: float = Field(0.0, ge=0)  # 0: unlimited
    mirror_deletes: bool = False
    backups_to_keep: int = Field(2, ge=0)
    webhook_url: str = ""
    retry_initial_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float | None = Field(None, gt=0)  # None: poll_seconds

    @pydantic.field_validator("source")
    @classmethod
    def _source_given(cls, value: str) -> str:
        if not value:
            raise ValueError("source is required (s3://, webhdfs://, hdfs:// or file:// URL)")
        return value

    @pydantic.field_validator("endpoints", mode="wrap")
    @classmethod
    def _endpoint_strings(cls, value: Any, handler: Any) -> list[str]:
        if not isinstance(value, list):
            raise ValueError("endpoints must be a list of HOST:PORT strings")
        if not all(isinstance(e, str) for e in value):
            raise ValueError("endpoints must be a list of HOST:PORT strings")
        return list(handler(value))

    @pydantic.field_validator("webhook_url")
    @classmethod
    def _http_webhook(cls, value: str) -> str:
        if value and urllib.parse.urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"webhook_url {value!r} must be an http(s) URL")
        return value

    @property
    def retry_max(self) -> float:
        return self.poll_seconds if self.retry_max_seconds is None else self.retry_max_seconds


class BatchingTable(_Table):
    """[models.NAME.batching]: BatchingParameters fields that override the global ones for
    one model; a field not given keeps the global value (serving/batching_policy.py)."""

    reject_unknown = "unknown batching setting(s):"

    max_batch_size: int | None = Field(None, gt=0)
    batch_timeout_micros: int | None = Field(None, ge=0)
    max_enqueued_batches: int | None = Field(None, gt=0)
    num_batch_threads: int | None = Field(None, gt=0)
    thread_pool_name: str | None = None
    allowed_batch_sizes: tuple[int, ...] | None = None
    pad_variable_length_inputs: bool | None = None
    enable_large_batch_splitting: bool | None = None
    max_execution_batch_size: int | None = Field(None, gt=0)

    @pydantic.field_validator("allowed_batch_sizes", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def fields_set(self) -> dict[str, Any]:
        """The fields this table gives, to replace in the global BatchingParameters."""
        return {name: getattr(self, name) for name in sorted(self.model_fields_set)}


class ModelTables(_Table):
    """[models.NAME]: the per-model tables; other tables under it are ignored (warned)."""

    cache: ModelCacheTable | None = None
    sync: SyncTable | None = None
    batching: BatchingTable | None = None
    traffic: dict[str, Any] | None = None


class ConfigDocument(_Table):
    """The whole file. [server] stays a plain table here: its keys are flags, converted and
    checked against the flag table by settings.py."""

    server: dict[str, Any] = {}
    admin: AdminTable = AdminTable()
    auth: AuthTable = AuthTable()
    cache: CacheTable = CacheTable()
    models: dict[str, ModelTables] = {}

    @pydantic.field_validator("server", mode="wrap")
    @classmethod
    def _server_table(cls, value: Any, handler: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError("must be a table")
        return dict(value)

    @pydantic.field_validator("models", mode="wrap")
    @classmethod
    def _models_table(cls, value: Any, handler: Any) -> dict[str, ModelTables]:
        if not isinstance(value, dict):
            raise ValueError("[models] must be a table of model names")
        return dict(handler(value))


_TYPE_TEXTS = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
}


def _table_and_key(loc: tuple[Any, ...]) -> tuple[str, str]:
    """(`[models.m.sync]`, `poll_seconds`) from pydantic's error location."""
    depth = 3 if loc and loc[0] == "models" else 1
    table, key = loc[:depth], loc[depth:]
    return "[" + ".".join(str(p) for p in table) + "]", str(key[0]) if key else ""


def _message(error: Mapping[str, Any], greater_than: str) -> str:
    table, key = _table_and_key(tuple(error["loc"]))
    kind = error["type"]
    if kind == "value_error":
        text = str(error["ctx"]["error"])
        if text.startswith(("[admin]", "[models]")):
            return text
        return f"{table}: {text}"
    if kind in ("greater_than", "greater_than_equal", "less_than_equal"):
        limit = error["ctx"].get("gt", error["ctx"].get("ge", error["ctx"].get("le")))
        wording = {
            "greater_than": greater_than,
            "greater_than_equal": "must be >= {gt}",
            "less_than_equal": "must be <= {gt}",
        }[kind]
        text = wording.format(gt=f"{limit:g}")  # 0, not 0.0, for float keys
    else:
        text = _TYPE_TEXTS.get(kind, str(error["msg"]))
    where = f"{table}: {key}" if key else table
    return f"{where} {text}, got {error['input']!r}"


def _table_class(loc: tuple[Any, ...]) -> type[_Table]:
    if loc and loc[0] == "models" and len(loc) >= 3:
        return {"cache": ModelCacheTable, "sync": SyncTable, "batching": BatchingTable}.get(
            str(loc[2]), _Table
        )
    return {"cache": CacheTable}.get(str(loc[0]) if loc else "", _Table)


@dataclasses.dataclass(frozen=True)
class ConfigFile:
    """The validated file: its typed tables, the path they came from and the unknown keys
    that were ignored (warnings for the log)."""

    path: str  # "" without --config
    document: ConfigDocument = dataclasses.field(default_factory=ConfigDocument)
    warnings: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Mapping[str, Any], path: str) -> ConfigFile:
        """Validate a parsed TOML document; ConfigFileError names table, key and file."""
        try:
            document = ConfigDocument.model_validate(dict(data))
        except pydantic.ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            greater = _table_class(tuple(error["loc"])).greater_than
            raise ConfigFileError(f"{_message(error, greater)} (in {path})") from None
        return cls(path, document, tuple(_ignored_keys(document, path)))

    def where(self) -> str:
        """`(in FILE)`, to end a message about this file's contents."""
        return f" (in {self.path})" if self.path else ""

    @property
    def server(self) -> dict[str, Any]:
        return self.document.server

    @property
    def admin(self) -> AdminTable:
        return self.document.admin

    @property
    def auth(self) -> AuthTable:
        return self.document.auth

    @property
    def models(self) -> dict[str, ModelTables]:
        return self.document.models

    def sync_tables(self) -> dict[str, SyncTable]:
        return {n: m.sync for n, m in self.document.models.items() if m.sync is not None}

    def batching_tables(self) -> dict[str, BatchingTable]:
        """Models whose [models.NAME.batching] table sets at least one field."""
        return {
            name: model.batching
            for name, model in self.document.models.items()
            if model.batching is not None and model.batching.model_fields_set
        }

    def traffic_tables(self) -> dict[str, dict[str, Any]]:
        """[models.NAME.traffic] tables, unvalidated (app/traffic/rules.py checks them)."""
        return {n: m.traffic for n, m in self.document.models.items() if m.traffic is not None}

    def cache_tables(self, cache_url_flag: str) -> CacheTables:
        """[cache] and the models that enable caching; --cache_url overrides [cache] url."""
        models = {
            name: model.cache
            for name, model in self.document.models.items()
            if model.cache is not None and model.cache.enabled
        }
        url = cache_url_flag or self.document.cache.url
        if models and not url:
            raise ConfigFileError(
                f"[cache]: caching is enabled for {', '.join(sorted(models))} but no cache URL "
                f"is set ([cache] url or --cache_url){self.where() or ' (in config)'}"
            )
        return CacheTables(url, self.document.cache, models, self.path or "config")


@dataclasses.dataclass(frozen=True)
class CacheTables:
    """What the result cache is configured with: the URL to use (flag or file), [cache],
    and the [models.NAME.cache] tables that enable caching."""

    url: str  # "" : the cache is off
    table: CacheTable
    models: dict[str, ModelCacheTable]
    source: str  # the file the tables came from, for error messages


def _ignored_keys(document: ConfigDocument, path: str) -> list[str]:
    found = [f"[{key}]" for key in sorted(document.model_extra or {})]
    for name, table in (("admin", document.admin), ("auth", document.auth)):
        found += [f"[{name}] {key}" for key in sorted(table.model_extra or {})]
    for model, tables in sorted(document.models.items()):
        found += [f"[models.{model}.{key}]" for key in sorted(tables.model_extra or {})]
    return [f"{path}: unknown setting {what} ignored" for what in found]
