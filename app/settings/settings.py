"""Flags + config file + environment -> one validated Settings object; nothing else reads
argv or the environment for configuration.

`tensorflow_model_server` flags keep TF Serving's names, defaults and parsing (`--name=value`,
bare `--flag` for booleans); flags that only make sense inside TF Serving's C++ build (TF
Lite, XLA, profiler, TPU, ...) are accepted and reported as ignored. The flag values are a
pydantic model built from flags.py's FLAGS table (typed, checked again on assignment). tfgate's own
settings live in one TOML file (`--config`), validated into typed tables by config_file.py;
its [server] table sets flags, and flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from app.settings.config_file import (
    ADMIN_TOKENS_ENV,
    AdminTable,
    AuthTable,
    BatchingTable,
    CacheTables,
    ConfigFile,
    ConfigFileError,
    SettingsError,
    SyncTable,
)
from app.settings.flags import FLAGS, FLAGS_BY_NAME, Flag

__all__ = ["ConfigFileError", "Settings", "SettingsError", "load_settings"]

INT32_MAX = 2**31 - 1
# Room in a gRPC request message beyond its tensors' bytes: ModelSpec, aliases, TensorProto
# framing (grpc_receive_limit_bytes()).
MESSAGE_HEADROOM_BYTES = 4 << 20
# What --grpc_max_buffered_request_bytes must allow beyond one whole request message: one
# HTTP/2 connection window's worth (app/rpc/h2/limits.py CONNECTION_WINDOW_BYTES) of other
# calls' bytes, so a message of the largest size can always be received.
BUFFERED_REQUEST_ROOM_BYTES = 64 << 20
# The quota when --grpc_max_buffered_request_bytes is 0 (request_buffer_quota_bytes()).
DEFAULT_REQUEST_BUFFER_BYTES = 1 << 30


# The flag values as a typed model: one field per flag, with its kind and default. Strict, so a
# value set after parsing (main.fit_connection_caps) must have the flag's type.
ServerFlags: type[pydantic.BaseModel] = pydantic.create_model(
    "ServerFlags",
    __config__=pydantic.ConfigDict(strict=True, extra="forbid", validate_assignment=True),
    **{f.name: (f.kind, f.default) for f in FLAGS},
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of one server process, validated. Flags read as attributes
    (`settings.port`); the config file's tables as typed properties (`settings.admin`,
    `settings.cache`, `settings.sync_tables`, `settings.batching_tables`)."""

    flags: Any  # ServerFlags
    ignored_flags: tuple[str, ...] = ()
    unknown_args: tuple[str, ...] = ()
    file: ConfigFile = dataclasses.field(default_factory=lambda: ConfigFile(""))
    admin_env_tokens: tuple[str, ...] = ()  # from TFGATE_ADMIN_TOKENS
    cache: CacheTables | None = None  # filled by load_settings()

    def __getattr__(self, name: str) -> Any:
        if name in FLAGS_BY_NAME:
            return getattr(self.flags, name)
        raise AttributeError(name)

    def flag(self, name: str) -> Any:
        return getattr(self.flags, name)

    @property
    def warnings(self) -> tuple[str, ...]:
        """Unknown config-file keys that were ignored, for the log."""
        return self.file.warnings

    @property
    def admin(self) -> AdminTable:
        return self.file.admin

    @property
    def auth(self) -> AuthTable:
        return self.file.auth

    @property
    def sync_tables(self) -> dict[str, SyncTable]:
        return self.file.sync_tables()

    @property
    def batching_tables(self) -> dict[str, BatchingTable]:
        return self.file.batching_tables()

    @property
    def traffic_tables(self) -> dict[str, dict[str, Any]]:
        return self.file.traffic_tables()

    @property
    def saved_model_tag_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.flags.saved_model_tags.split(",") if t.strip())

    @property
    def intra_op_threads(self) -> int:
        return (
            self.flags.tensorflow_intra_op_parallelism
            or self.flags.tensorflow_session_parallelism
        )

    @property
    def inter_op_threads(self) -> int:
        return (
            self.flags.tensorflow_inter_op_parallelism
            or self.flags.tensorflow_session_parallelism
        )


_TRUE = {"true", "1", "t", "yes", "y"}
_FALSE = {"false", "0", "f", "no", "n"}


def _convert(flag: Flag, text: str) -> Any:
    try:
        if flag.kind is bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(text)
        return flag.kind(text)
    except ValueError:
        raise SettingsError(
            f"Illegal value '{text}' for flag --{flag.name} (expected {flag.kind.__name__})"
        ) from None


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """TF's flag syntax: --name=value, --name value, and bare --flag for booleans.
    Returns (values, flags set that tfgate ignores, unknown arguments)."""
    values = {f.name: f.default for f in FLAGS}
    ignored: list[str] = []
    unknown: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            unknown.append(arg)
            continue
        name, has_value, text = arg.lstrip("-").partition("=")
        flag = FLAGS_BY_NAME.get(name)
        if flag is None:
            unknown.append(arg)
            continue
        if not has_value:
            if flag.kind is bool:
                text = "true"
            elif i < len(args) and not args[i].startswith("--"):
                # `--model_name --port=9000` must not name the model "--port=9000"
                text = args[i]
                i += 1
            else:
                raise SettingsError(f"Missing value for flag --{name}")
        values[name] = _convert(flag, text)
        if flag.ignored:
            ignored.append(name)
    return values, ignored, unknown


def load_settings(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> Settings:
    """argv (without the program name) and the environment (os.environ by default) ->
    validated Settings; SettingsError (ConfigFileError for the file's contents) says why not."""
    environ = os.environ if environ is None else environ
    values, ignored, unknown = parse_flags(argv)
    file = ConfigFile("")
    if values["config"]:
        path = values["config"]
        file = ConfigFile.parse(load_toml(path), path)
        explicit = {a.lstrip("-").partition("=")[0] for a in argv if a.startswith("-")}
        for name, value in file.server.items():
            flag = FLAGS_BY_NAME.get(name)
            if flag is None:
                raise ConfigFileError(f"{path}: unknown [server] setting {name!r}")
            if name not in explicit:  # flags override the file
                values[name] = _convert(
                    flag, str(value).lower() if flag.kind is bool else str(value)
                )
    env_tokens = tuple(
        t.strip() for t in environ.get(ADMIN_TOKENS_ENV, "").split(",") if t.strip()
    )
    settings = Settings(
        ServerFlags(**values),
        tuple(ignored),
        tuple(unknown),
        file,
        env_tokens,
        file.cache_tables(values["cache_url"]),
    )
    validate(settings)
    return settings


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"Cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"Invalid TOML in config file {path}: {exc}") from None


def validate(settings: Settings) -> None:
    """TF Serving's startup checks (main.cc / server.cc), with its texts."""
    flags = settings.flags.model_dump()
    if flags["version"]:
        return
    if flags["port"] == 0 and not flags["grpc_socket_path"]:
        raise SettingsError(
            "Server setup failed: At least one of server_options.grpc_port or "
            "server_options.grpc_socket_path must be set."
        )
    if flags["use_alts_credentials"] and flags["ssl_config_file"]:
        raise SettingsError(
            "Either use_alts_credentials must be false or ssl_config_file must be empty."
        )
    if not flags["model_base_path"] and not flags["model_config_file"]:
        raise SettingsError(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    # server.cc checks this only when it builds the SessionBundleConfig from flags.
    if (
        flags["batching_parameters_file"]
        and not flags["enable_batching"]
        and not flags["platform_config_file"]
    ):
        raise SettingsError(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    if (
        flags["tensorflow_session_parallelism"] > 0
        and flags["tensorflow_intra_op_parallelism"] > 0
        and flags["tensorflow_inter_op_parallelism"] > 0
    ):
        raise SettingsError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. "
            "You cannot configure all."
        )
    if flags["num_cpu_workers"] < 1:
        raise SettingsError("--num_cpu_workers must be at least 1")
    if bool(flags["rest_api_ssl_cert_file"]) != bool(flags["rest_api_ssl_key_file"]):
        raise SettingsError(
            "--rest_api_ssl_cert_file and --rest_api_ssl_key_file must be given together"
        )
    if flags["grpc_implementation"] not in ("h2", "grpcio"):
        raise SettingsError("--grpc_implementation must be h2 or grpcio")
    if flags["metrics_path"] and not flags["metrics_path"].startswith("/"):
        raise SettingsError("--metrics_path must be empty or start with /")
    if not 1 <= flags["grpc_max_concurrent_streams"] <= 2**31 - 1:
        raise SettingsError("--grpc_max_concurrent_streams must be between 1 and 2147483647")
    if flags["log_format"] not in ("text", "json"):
        raise SettingsError("--log_format must be text or json")
    if flags["max_request_tensor_bytes"] < 0:
        raise SettingsError("--max_request_tensor_bytes must not be negative")
    for name in (
        "grpc_idle_timeout_seconds",
        "grpc_keepalive_time_seconds",
        "grpc_min_recv_ping_interval_without_data_seconds",
        "grpc_max_ping_strikes",
    ):
        if not flags[name] >= 0:  # NaN too: a NaN interval would arm no timer at all
            raise SettingsError(f"--{name} must not be negative")
    _validate_request_buffer_quota(settings)
    for name in (
        "grpc_max_connections",
        "grpc_handshake_timeout_seconds",
        "grpc_keepalive_timeout_seconds",
        "rest_max_connections",
        "rest_idle_timeout_seconds",
        "rest_header_timeout_seconds",
        "rest_body_timeout_seconds",
    ):
        if not flags[name] > 0:  # NaN too
            raise SettingsError(f"--{name} must be positive")


def _validate_request_buffer_quota(settings: Settings) -> None:
    """--grpc_max_buffered_request_bytes is 0 (automatic) or, when the h2 transport serves
    gRPC, at least one request message of the largest size plus BUFFERED_REQUEST_ROOM_BYTES: a
    smaller quota would refuse messages the receive limit allows, so startup stops instead of
    raising a value the operator chose."""
    quota_bytes = settings.flags.grpc_max_buffered_request_bytes
    if quota_bytes < 0:
        raise SettingsError("--grpc_max_buffered_request_bytes must be positive (or 0: automatic)")
    if quota_bytes == 0 or not _serves_h2(settings):
        return  # automatic, or grpc.aio serves: grpc core's resource quota applies instead
    message_bytes = grpc_receive_limit_bytes(settings)
    needed_bytes = message_bytes + BUFFERED_REQUEST_ROOM_BYTES
    if quota_bytes < needed_bytes:
        raise SettingsError(
            f"--grpc_max_buffered_request_bytes={quota_bytes} is too small: it must hold "
            f"one request message of the largest size ({message_bytes} bytes, from "
            f"--max_request_tensor_bytes / --worker_arena_bytes plus 4 MiB) plus 64 MiB, "
            f"at least {needed_bytes}"
        )


def _serves_h2(settings: Settings) -> bool:
    return settings.flags.grpc_implementation == "h2" and not settings.flags.grpc_channel_arguments


def request_buffer_quota_bytes(settings: Settings) -> int:
    """The h2 transport's server-wide quota: --grpc_max_buffered_request_bytes, or with 0
    DEFAULT_REQUEST_BUFFER_BYTES, raised to one largest request message plus
    BUFFERED_REQUEST_ROOM_BYTES when a large --worker_arena_bytes needs more."""
    quota_bytes = settings.flags.grpc_max_buffered_request_bytes
    if quota_bytes:
        return quota_bytes
    return max(DEFAULT_REQUEST_BUFFER_BYTES,
               grpc_receive_limit_bytes(settings) + BUFFERED_REQUEST_ROOM_BYTES)


def grpc_receive_limit_bytes(settings: Settings) -> int:
    """The largest gRPC request message served: the request tensor limit plus
    MESSAGE_HEADROOM_BYTES (TF Serving allows INT32_MAX; tensors past the limit are refused
    after decoding anyway, so buffering a larger message only costs memory)."""
    return min(INT32_MAX, request_tensor_limit_bytes(settings) + MESSAGE_HEADROOM_BYTES)


def request_tensor_limit_bytes(settings: Settings) -> int:
    """What one request's decoded input tensors may take: --max_request_tensor_bytes, never
    more than the worker arena they are written into."""
    arena = settings.flags.worker_arena_bytes
    wanted = settings.flags.max_request_tensor_bytes
    return min(wanted, arena) if wanted > 0 else arena
