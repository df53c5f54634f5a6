"""TF Serving's text-format config files -> tfgate's config values.

Reads `--model_config_file` (ModelServerConfig, parsed with the official config protos),
`--batching_parameters_file` / per-model `batching_params.pbtxt` (BatchingParameters),
`--monitoring_config_file` and `--ssl_config_file`, and applies TF Serving's validation
with its error texts. Called by main.py at startup and on config reload. The values it
produces (ModelConfig, VersionPolicy, BatchingParameters) are defined here, below the
registry and the batcher that use them.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Iterable

from google.protobuf import text_format

from app.core.protos import model_server_config_pb2
from proto import serving_config_pb2


class PolicyKind(enum.Enum):
    LATEST = "latest"
    ALL = "all"
    SPECIFIC = "specific"


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ServableVersionPolicy: latest{num_versions} (default 1) / all / specific."""

    kind: PolicyKind = PolicyKind.LATEST
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def aspired(self, on_disk: Iterable[int]) -> set[int]:
        found = sorted(set(on_disk))
        if self.kind is PolicyKind.ALL:
            return set(found)
        if self.kind is PolicyKind.SPECIFIC:
            return set(found) & set(self.versions)
        return set(found[-max(1, self.num_versions) :]) if found else set()

    def describe(self) -> dict[str, object]:
        if self.kind is PolicyKind.LATEST:
            return {"latest": {"num_versions": self.num_versions}}
        if self.kind is PolicyKind.ALL:
            return {"all": {}}
        return {"specific": {"versions": list(self.versions)}}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model as configured (ModelConfig in TF Serving's model_server_config.proto)."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: tuple[tuple[str, int], ...] = ()
    platform: str = "tensorflow"


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (session_bundle_config.proto) with its defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    @property
    def execution_batch_size(self) -> int:
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size


class ConfigError(Exception):
    """A config file is invalid; the message is TF Serving's text where one exists."""


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"Unable to read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not valid UTF-8") from None


def parse_model_server_config(text: str) -> list[ModelConfig]:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig: {exc}"
        ) from None
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("ModelServer does not yet support custom model config.")
    entries = config.model_config_list.config
    seen: set[str] = set()
    for entry in entries:  # ServerCore's ValidateModelConfigList: the whole list first
        if entry.name in seen:
            raise ConfigError(f"Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
        if not (os.path.isabs(entry.base_path) or "://" in entry.base_path):
            raise ConfigError(
                f"Expected model {entry.name} to have an absolute path or URI; "
                f"got base_path()={entry.base_path}"
            )
    return [_model_config(entry) for entry in entries]


def _model_config(entry: model_server_config_pb2.ModelConfig) -> ModelConfig:
    if not entry.name:
        raise ConfigError("ModelConfig has no name")
    base_path = entry.base_path
    if "://" in base_path and not base_path.startswith("file://"):
        raise ConfigError(
            f"Model {entry.name}: base_path {base_path} is remote; tfgate serves local "
            "directories: configure a sync source for it in the tfgate TOML config instead"
        )
    base_path = base_path.removeprefix("file://")
    policy = _policy(entry)
    labels = tuple(sorted(entry.version_labels.items()))
    return ModelConfig(entry.name, base_path, policy, labels, _platform(entry))


def _platform(entry: model_server_config_pb2.ModelConfig) -> str:
    """ServerCore's GetPlatform: model_platform, or the deprecated model_type, not both."""
    if entry.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if entry.model_platform:
            raise ConfigError(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                "ModelServerConfig::model_platform."
            )
        if entry.model_type != model_server_config_pb2.TENSORFLOW:
            raise ConfigError(
                f"ModelServerConfig::model_type choice {entry.model_type} not supported."
            )
        return "tensorflow"
    if not entry.model_platform:
        raise ConfigError(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform."
        )
    return entry.model_platform


def check_platforms(configs: list[ModelConfig]) -> None:
    """tfgate serves SavedModels only (TF Serving's default platform_config_map)."""
    for config in configs:
        if config.platform != "tensorflow":
            raise ConfigError(
                f"Model {config.name}: model_platform {config.platform!r} is not supported "
                "(only tensorflow)"
            )


def _policy(entry: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = entry.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy(PolicyKind.ALL)
    if which == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"Model {entry.name}: specific version policy lists no versions")
        return VersionPolicy(PolicyKind.SPECIFIC, versions=tuple(policy.specific.versions))
    if which == "latest":
        return VersionPolicy(PolicyKind.LATEST, num_versions=policy.latest.num_versions or 1)
    return VersionPolicy()


def load_model_server_config(path: str) -> list[ModelConfig]:
    return parse_model_server_config(read_text(path))


def single_model_config(name: str, base_path: str) -> ModelConfig:
    """--model_name/--model_base_path: the same config TF Serving builds from those flags."""
    if not (os.path.isabs(base_path) or "://" in base_path):
        base_path = os.path.abspath(base_path)
    return ModelConfig(name, base_path.removeprefix("file://"))


def parse_batching_parameters(text: str, source: str = "batching parameters") -> BatchingParameters:
    proto = serving_config_pb2.BatchingParameters()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(
            f"Error parsing text-format BatchingParameters in {source}: {exc}"
        ) from None
    return batching_parameters_from_proto(proto)


def batching_parameters_from_proto(
    proto: serving_config_pb2.BatchingParameters,
) -> BatchingParameters:
    """TF Serving's defaults for the fields left unset, and its checks."""
    defaults = BatchingParameters()
    max_batch_size = (
        proto.max_batch_size.value
        if proto.HasField("max_batch_size")
        else (defaults.max_batch_size)
    )
    allowed = tuple(proto.allowed_batch_sizes)
    validate_allowed_batch_sizes(allowed, max_batch_size)
    splitting = proto.enable_large_batch_splitting.value
    max_exec = (
        proto.max_execution_batch_size.value if proto.HasField("max_execution_batch_size") else None
    )
    if max_batch_size <= 0:
        raise ConfigError(f"max_batch_size must be positive; was {max_batch_size}")
    return BatchingParameters(
        max_batch_size=max_batch_size,
        batch_timeout_micros=_wrapped(proto, "batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=_wrapped(proto, "max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=_wrapped(proto, "num_batch_threads", defaults.num_batch_threads),
        thread_pool_name=_wrapped(proto, "thread_pool_name", defaults.thread_pool_name),
        allowed_batch_sizes=allowed,
        pad_variable_length_inputs=proto.pad_variable_length_inputs,
        enable_large_batch_splitting=splitting,
        max_execution_batch_size=(max_exec or max_batch_size) if splitting else None,
    )


def _wrapped(proto: serving_config_pb2.BatchingParameters, field: str, default: object) -> object:
    return getattr(proto, field).value if proto.HasField(field) else default


def validate_allowed_batch_sizes(allowed: tuple[int, ...], max_batch_size: int) -> None:
    """TF Serving's checks (batching_session.cc), with its texts."""
    if not allowed:
        return
    previous = 0
    for size in allowed:
        if size <= previous:
            raise ConfigError("allowed_batch_sizes entries must be monotonically increasing")
        previous = size
    if allowed[-1] != max_batch_size:
        raise ConfigError(
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
            f"{allowed[-1]}; expected {max_batch_size}"
        )


def load_batching_parameters(path: str) -> BatchingParameters:
    return parse_batching_parameters(read_text(path), path)


def load_monitoring_config(path: str) -> serving_config_pb2.MonitoringConfig:
    config = serving_config_pb2.MonitoringConfig()
    try:
        text_format.Parse(read_text(path), config)
    except text_format.ParseError as exc:
        raise ConfigError(f"Error parsing text-format MonitoringConfig in {path}: {exc}") from None
    return config


def load_ssl_config(path: str) -> serving_config_pb2.SSLConfig:
    config = serving_config_pb2.SSLConfig()
    try:
        text_format.Parse(read_text(path), config)
    except text_format.ParseError as exc:
        raise ConfigError(f"Error parsing text-format SSLConfig in {path}: {exc}") from None
    return config
