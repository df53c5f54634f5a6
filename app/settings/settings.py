"""Flags + config file + environment -> one validated Settings object; nothing else reads
argv or the environment for configuration.

`tensorflow_model_server` flags keep TF Serving's names, defaults and parsing (`--name=value`,
bare `--flag` for booleans); flags that only make sense inside TF Serving's C++ build (TF
Lite, XLA, profiler, TPU, ...) are accepted and reported as ignored. The flag values are a
pydantic model built from the FLAGS table (typed, checked again on assignment). tfgate's own
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

__all__ = ["FLAGS", "ConfigFileError", "Flag", "Settings", "SettingsError", "load_settings"]


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str
    kind: type  # bool, int, float, str
    default: Any
    help: str
    ignored: bool = False  # accepted for compatibility, no effect in tfgate


_CPUS = os.cpu_count() or 1

FLAGS: tuple[Flag, ...] = (
    Flag(
        "port", int, 8500, "TCP port to listen on for gRPC/HTTP API. Disabled if port set to zero."
    ),
    Flag("grpc_socket_path", str, "", "If non-empty, listen to a UNIX socket for gRPC API."),
    Flag("rest_api_port", int, 0, "Port to listen on for HTTP/REST API. 0 disables REST."),
    Flag("rest_api_num_threads", int, 4 * _CPUS, "Accepted; tfgate's REST runs on asyncio."),
    Flag("rest_api_timeout_in_ms", int, 30000, "Timeout for HTTP/REST API calls."),
    Flag("rest_api_enable_cors_support", bool, False, "Enable CORS headers in REST responses."),
    Flag("enable_batching", bool, False, "Enable batching."),
    Flag(
        "allow_version_labels_for_unavailable_models",
        bool,
        False,
        "Allow assigning new version labels to versions that are not loaded yet.",
    ),
    Flag("batching_parameters_file", str, "", "BatchingParameters text proto file."),
    Flag(
        "enable_per_model_batching_parameters",
        bool,
        False,
        "Read batching_params.pbtxt from each SavedModel directory.",
    ),
    Flag("model_config_file", str, "", "ModelServerConfig text proto file."),
    Flag(
        "model_config_file_poll_wait_seconds",
        int,
        0,
        "Seconds between reloads of --model_config_file; 0 reads it once.",
    ),
    Flag("model_name", str, "default", "Name of the model (ignored with --model_config_file)."),
    Flag("model_base_path", str, "", "Path to export (ignored with --model_config_file)."),
    Flag(
        "num_load_threads",
        int,
        0,
        "Loads of different models one worker runs at once, beside serving; 0 means 1.",
    ),
    Flag("num_unload_threads", int, 0, "Accepted; unloads run concurrently per model."),
    Flag("max_num_load_retries", int, 5, "Retries of a failed load."),
    Flag("load_retry_interval_micros", int, 60_000_000, "Wait between load retries."),
    Flag(
        "file_system_poll_wait_seconds",
        int,
        1,
        "Seconds between polls of each base path for new versions; 0 once; <0 never.",
    ),
    Flag("flush_filesystem_caches", bool, True, "Accepted for compatibility."),
    Flag("tensorflow_session_parallelism", int, 0, "Sets both intra and inter op parallelism."),
    Flag("tensorflow_intra_op_parallelism", int, 0, "Intra-op threads per worker; 0 = auto."),
    Flag("tensorflow_inter_op_parallelism", int, 0, "Inter-op threads per worker; 0 = auto."),
    Flag(
        "tensorflow_session_config_file",
        str,
        "",
        "tensorflow.ConfigProto text file every session loads with; the parallelism and GPU "
        "memory flags, when given, override it.",
    ),
    Flag("saved_model_tags", str, "serve", "Comma-separated tags of the MetaGraphDef to load."),
    Flag("grpc_channel_arguments", str, "", "Comma-separated gRPC channel arguments k=v."),
    Flag(
        "grpc_max_threads",
        int,
        0,
        "Cap on concurrent gRPC calls (beyond it: RESOURCE_EXHAUSTED). TF Serving's default is "
        "4 x CPUs threads; tfgate's handlers are not threads, so 0 = no cap.",
    ),
    Flag("enable_model_warmup", bool, True, "Replay assets.extra/tf_serving_warmup_requests."),
    Flag("num_request_iterations_for_warmup", int, 0, "Replays per warmup record if > 0."),
    Flag("version", bool, False, "Print the version and exit."),
    Flag("monitoring_config_file", str, "", "MonitoringConfig text proto file."),
    Flag("ssl_config_file", str, "", "SSLConfig text proto file for gRPC."),
    Flag(
        "platform_config_file",
        str,
        "",
        "PlatformConfigMap text proto; its tensorflow SessionBundleConfig replaces the "
        "batching, session, tag and warmup flags.",
    ),
    Flag("per_process_gpu_memory_fraction", float, 0.0, "GPU memory fraction per worker."),
    Flag(
        "enable_signature_method_name_check",
        bool,
        False,
        "Require classify/regress signature method names.",
    ),
    Flag("enable_grpc_healthcheck_service", bool, False, "Serve grpc.health.v1."),
    Flag(
        "enable_serialization_as_tensor_content",
        bool,
        False,
        "gRPC outputs in tensor_content instead of typed fields.",
    ),
    Flag("remove_unused_fields_from_bundle_metagraph", bool, True, "Accepted.", ignored=True),
    Flag("use_alts_credentials", bool, False, "ALTS is not supported by tfgate.", ignored=True),
    Flag("prefer_tflite_model", bool, False, "TF Lite is not supported.", ignored=True),
    Flag("num_tflite_pools", int, _CPUS, "TF Lite is not supported.", ignored=True),
    Flag("num_tflite_interpreters_per_pool", int, 1, "TF Lite is not supported.", ignored=True),
    Flag("enable_profiler", bool, True, "The TF profiler service is not served.", ignored=True),
    Flag("xla_cpu_compilation_enabled", bool, False, "XLA is not used.", ignored=True),
    Flag("xla_gpu_compilation_enabled", bool, False, "XLA is not used.", ignored=True),
    Flag("thread_pool_factory_config_file", str, "", "Accepted, ignored.", ignored=True),
    Flag("mixed_precision", str, "", "Accepted, ignored.", ignored=True),
    Flag("skip_initialize_tpu", bool, False, "No TPU support.", ignored=True),
    Flag("tensorflow_model_server_log_level", str, "INFO", "tfgate: log level."),
    # tfgate's own flags
    Flag("config", str, "", "tfgate: TOML config file (cache, sync, admin, per-model settings)."),
    Flag("num_cpu_workers", int, 1, "tfgate: worker processes when no GPU is visible."),
    Flag(
        "adaptive_batching",
        bool,
        True,
        "tfgate: with CPU workers, cut batches below max_batch_size at half the rows in the "
        "system when the gateway is slower than the worker (docs/operations.md); false = TF "
        "Serving's fixed behaviour.",
    ),
    Flag("num_gpu_workers", int, -1, "tfgate: cap on GPU worker processes; -1 = one per GPU."),
    Flag(
        "worker_watchdog_seconds",
        float,
        120.0,
        "tfgate: kill and restart a worker that runs one batch longer than this.",
    ),
    Flag(
        "tensorflow_thread_spinning",
        bool,
        False,
        "tfgate: let TF's idle op threads spin (TF's default); off, they sleep and leave the "
        "cores to the gateway.",
    ),
    Flag("worker_arena_bytes", int, 64 << 20, "tfgate: shared-memory arena size per direction."),
    Flag(
        "max_request_tensor_bytes",
        int,
        0,
        "tfgate: bytes one request's input tensors may take, computed from their declared "
        "shapes before anything is allocated (beyond it: INVALID_ARGUMENT); 0 or more than "
        "--worker_arena_bytes means the arena size.",
    ),
    Flag(
        "grpc_max_connections",
        int,
        4096,
        "tfgate: open gRPC connections per listening address; beyond it new ones are closed "
        "(lowered at startup to fit the file-descriptor limit).",
    ),
    Flag(
        "grpc_idle_timeout_seconds",
        float,
        300.0,
        "tfgate: a gRPC connection with no call for this long gets GOAWAY and is closed; "
        "0 = never.",
    ),
    Flag(
        "grpc_handshake_timeout_seconds",
        float,
        10.0,
        "tfgate: a gRPC connection that has not finished its TLS/HTTP/2 handshake by then is "
        "closed.",
    ),
    Flag(
        "rest_max_connections",
        int,
        4096,
        "tfgate: open REST connections; at the cap a new one replaces the longest-idle one, "
        "or gets 503 when every connection has a request in flight (lowered at startup to fit "
        "the file-descriptor limit).",
    ),
    Flag(
        "rest_idle_timeout_seconds",
        float,
        30.0,
        "tfgate: a keep-alive REST connection with no request for this long is closed.",
    ),
    Flag(
        "rest_header_timeout_seconds",
        float,
        10.0,
        "tfgate: time from connect (or a request's first byte) to its complete headers; "
        "beyond it the connection is closed (408 if a request had begun).",
    ),
    Flag(
        "rest_body_timeout_seconds",
        float,
        60.0,
        "tfgate: time from a request's headers to the end of its body; beyond it: 408, "
        "connection closed.",
    ),
    Flag("rest_api_host", str, "0.0.0.0", "tfgate: address the REST server binds."),
    Flag("grpc_host", str, "0.0.0.0", "tfgate: address the gRPC server binds."),
    Flag(
        "grpc_implementation",
        str,
        "grpcio",
        "tfgate: grpcio (grpc.aio, on gRPC's C core) or h2 (tfgate's asyncio HTTP/2 gRPC "
        "server: experimental, for trusted networks only); --grpc_channel_arguments implies "
        "grpcio.",
    ),
    Flag(
        "grpc_max_concurrent_streams",
        int,
        256,
        "tfgate: HTTP/2 MAX_CONCURRENT_STREAMS the h2 gRPC server advertises and enforces per "
        "connection (streams beyond it: RST_STREAM REFUSED_STREAM).",
    ),
    Flag("log_format", str, "text", "tfgate: text or json."),
    Flag(
        "cache_url",
        str,
        "",
        "tfgate: Redis URL of the result cache (overrides [cache] url); see docs/cache.md.",
    ),
    Flag("access_log", bool, False, "tfgate: log one line per REST request (status, latency)."),
    Flag(
        "metrics_path",
        str,
        "/metrics",
        "tfgate: REST path of its Prometheus metrics alias, served whatever the monitoring "
        "config says; empty turns the alias off.",
    ),
    Flag("rest_api_ssl_cert_file", str, "", "tfgate: PEM certificate to serve REST over TLS."),
    Flag("rest_api_ssl_key_file", str, "", "tfgate: PEM private key for --rest_api_ssl_cert_file."),
)
FLAGS_BY_NAME = {f.name: f for f in FLAGS}


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
    if flags["grpc_idle_timeout_seconds"] < 0:
        raise SettingsError("--grpc_idle_timeout_seconds must not be negative")
    for name in (
        "grpc_max_connections",
        "grpc_handshake_timeout_seconds",
        "rest_max_connections",
        "rest_idle_timeout_seconds",
        "rest_header_timeout_seconds",
        "rest_body_timeout_seconds",
    ):
        if flags[name] <= 0:
            raise SettingsError(f"--{name} must be positive")


def request_tensor_limit_bytes(settings: Settings) -> int:
    """What one request's decoded input tensors may take: --max_request_tensor_bytes, never
    more than the worker arena they are written into."""
    arena = settings.flags.worker_arena_bytes
    wanted = settings.flags.max_request_tensor_bytes
    return min(wanted, arena) if wanted > 0 else arena
