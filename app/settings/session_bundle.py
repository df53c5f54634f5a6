"""How every SavedModel is loaded and batched: TF Serving's SessionBundleConfig.

tensorflow_model_server builds one SessionBundleConfig at startup (server.cc) and hands it to
the SavedModel source adapter: either from its flags (--enable_batching,
--batching_parameters_file, --tensorflow_session_config_file, the parallelism and GPU memory
flags, --saved_model_tags, the warmup flags) or, when --platform_config_file is given, from
that PlatformConfigMap alone, the flags above then having no effect. This module makes the
same choice once, at startup, and then applies tfgate's one change to TF's session defaults
(--tensorflow_thread_spinning, below); main.py passes the result to the worker pool (the session
ConfigProto every worker loads with), the batching policy and the version manager (tags and
warmup).
"""

from __future__ import annotations

import dataclasses
import logging

from google.protobuf import text_format

from app.core import protos
from app.settings import model_config
from app.settings.flags import FLAGS_BY_NAME
from app.settings.model_config import BatchingParameters, ConfigError
from app.settings.settings import Settings
from proto import session_bundle_config_pb2

log = logging.getLogger(__name__)

TENSORFLOW_PLATFORM = "tensorflow"
SOURCE_ADAPTER_TYPE = "tensorflow.serving.SavedModelBundleSourceAdapterConfig"
# Flags whose job a platform config file takes over (server.cc reads them only without one).
FLAGS_REPLACED_BY_PLATFORM_CONFIG = (
    "enable_batching",
    "batching_parameters_file",
    "enable_per_model_batching_parameters",
    "tensorflow_session_config_file",
    "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "per_process_gpu_memory_fraction",
    "saved_model_tags",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
)
# SessionBundleConfig fields that only mean something inside TF Serving's C++ build.
_NO_EFFECT_FIELDS = (
    "session_target",
    "session_run_load_threadpool_index",
    "experimental_transient_ram_bytes_during_load",
    "experimental_fixed_input_tensors",
    "enable_session_metadata",
    "prefer_tflite_model",
    "num_tflite_interpreters",
    "num_tflite_interpreters_per_pool",
    "num_tflite_pools",
    "wrap_session_with_no_threading_params",
    "mixed_precision",
)


@dataclasses.dataclass(frozen=True)
class SessionBundleSettings:
    """The parts of a SessionBundleConfig tfgate acts on."""

    session_config: bytes  # serialized tensorflow.ConfigProto every worker session loads with
    batching: BatchingParameters | None  # None: batching is off
    per_model_batching: bool  # read batching_params.pbtxt from each version directory
    saved_model_tags: tuple[str, ...]
    enable_model_warmup: bool
    warmup_iterations: int  # replays per warmup record; 0 means TF Serving's default (1)


def session_bundle_settings(settings: Settings) -> SessionBundleSettings:
    if settings.platform_config_file:
        replaced = sorted(
            name for name in FLAGS_REPLACED_BY_PLATFORM_CONFIG
            if settings.flag(name) != FLAGS_BY_NAME[name].default
        )
        if replaced:
            log.warning(
                "--platform_config_file is set: %s have no effect (the platform config's "
                "SessionBundleConfig replaces them)",
                ", ".join(f"--{name}" for name in replaced),
            )
        bundle = load_platform_config(settings.platform_config_file)
    else:
        bundle = from_flags(settings)
    if settings.tensorflow_thread_spinning:
        return bundle
    session_config = without_thread_spinning(bundle.session_config)
    return dataclasses.replace(bundle, session_config=session_config)


def without_thread_spinning(session_config: bytes) -> bytes:
    """The ConfigProto with TF's idle intra- and inter-op threads sleeping instead of
    spinning.

    TF's threads spin-wait for work between ops by default, which costs nothing when the
    model has the cores to itself. A tfgate worker shares them with the gateway (and with
    the other workers), so the spinning is taken from the gateway's decoding and encoding:
    measured on the 2-core bench machine (64-row dnn over gRPC), the worker's CPU per call
    fell by ~10% and throughput rose by 5-12%; the model called in-process also ran faster
    (docs/benchmarks.md). --tensorflow_thread_spinning keeps TF's default.
    """
    config = protos.config_pb2.ConfigProto.FromString(session_config)
    config.experimental.disable_thread_spinning = True
    return config.SerializeToString()


def from_flags(settings: Settings) -> SessionBundleSettings:
    """server.cc's SessionBundleConfig from flags."""
    batching = None
    if settings.enable_batching:
        batching = (
            model_config.load_batching_parameters(settings.batching_parameters_file)
            if settings.batching_parameters_file
            # server.cc's defaults without a file, which name the pool differently
            else BatchingParameters(thread_pool_name="model_server_batch_threads")
        )
    config = _base_session_config()
    if settings.tensorflow_session_config_file:
        config.MergeFrom(_read_session_config(settings.tensorflow_session_config_file))
    # The flags win over the file, but only when given: 0 means "not set" here, so a
    # thread count or memory fraction written in the file stays in force.
    gpu_memory_fraction = settings.per_process_gpu_memory_fraction
    if gpu_memory_fraction:
        config.gpu_options.per_process_gpu_memory_fraction = gpu_memory_fraction
    if settings.intra_op_threads:
        config.intra_op_parallelism_threads = settings.intra_op_threads
    if settings.inter_op_threads:
        config.inter_op_parallelism_threads = settings.inter_op_threads
    return SessionBundleSettings(
        session_config=config.SerializeToString(),
        batching=batching,
        per_model_batching=settings.enable_per_model_batching_parameters,
        saved_model_tags=settings.saved_model_tag_list,
        enable_model_warmup=settings.enable_model_warmup,
        warmup_iterations=settings.num_request_iterations_for_warmup,
    )


def load_platform_config(path: str) -> SessionBundleSettings:
    return parse_platform_config(model_config.read_text(path), path)


def parse_platform_config(text: str, path: str) -> SessionBundleSettings:
    """A PlatformConfigMap text proto -> the tensorflow platform's SessionBundleConfig."""
    platform_map = protos.platform_config_pb2.PlatformConfigMap()
    try:
        text_format.Parse(text, platform_map)
    except text_format.ParseError as exc:
        raise ConfigError(f"Invalid protobuf file: '{path}': {exc}") from None
    unsupported = sorted(set(platform_map.platform_configs) - {TENSORFLOW_PLATFORM})
    if unsupported:
        raise ConfigError(
            f"{path}: platform(s) {', '.join(unsupported)} are not supported (tfgate serves "
            f"the {TENSORFLOW_PLATFORM} platform only)"
        )
    if TENSORFLOW_PLATFORM not in platform_map.platform_configs:
        raise ConfigError(f"{path}: no platform_configs entry for \"{TENSORFLOW_PLATFORM}\"")
    adapter_any = platform_map.platform_configs[TENSORFLOW_PLATFORM].source_adapter_config
    adapter = session_bundle_config_pb2.SavedModelBundleSourceAdapterConfig()
    if not adapter_any.Unpack(adapter):
        raise ConfigError(
            f"{path}: source_adapter_config of platform {TENSORFLOW_PLATFORM} is "
            f"{adapter_any.type_url or 'empty'}; tfgate reads type.googleapis.com/"
            f"{SOURCE_ADAPTER_TYPE}"
        )
    return _from_session_bundle_config(adapter.legacy_config, path)


def _from_session_bundle_config(
    bundle: session_bundle_config_pb2.SessionBundleConfig, path: str
) -> SessionBundleSettings:
    for field, _ in bundle.ListFields():  # the fields the file sets (not left at default)
        if field.name in _NO_EFFECT_FIELDS:
            log.warning("%s: SessionBundleConfig.%s has no effect in tfgate", path, field.name)
    batching = None
    if bundle.HasField("batching_parameters"):
        batching = model_config.batching_parameters_from_proto(bundle.batching_parameters)
    config = _base_session_config()
    config.MergeFrom(bundle.session_config)
    iterations = bundle.model_warmup_options.num_request_iterations
    return SessionBundleSettings(
        session_config=config.SerializeToString(),
        batching=batching,
        per_model_batching=bundle.enable_per_model_batching_params,
        # the SavedModel loader's default when the config names no tags
        saved_model_tags=tuple(bundle.saved_model_tags) or ("serve",),
        # proto3 default: a platform config without the field turns warmup off, as in TF Serving
        enable_model_warmup=bundle.enable_model_warmup,
        warmup_iterations=iterations.value if iterations.value > 0 else 0,
    )


def _base_session_config() -> protos.config_pb2.ConfigProto:
    config = protos.config_pb2.ConfigProto()
    # Exports pinned to /gpu:0 must still load on a CPU-only worker. (A file cannot turn this
    # off: proto3 merging skips fields left at false.)
    config.allow_soft_placement = True
    return config


def _read_session_config(path: str) -> protos.config_pb2.ConfigProto:
    config = protos.config_pb2.ConfigProto()
    try:
        text_format.Parse(model_config.read_text(path), config)
    except text_format.ParseError as exc:
        raise ConfigError(f"Failed to read session config file: {path}: {exc}") from None
    return config
