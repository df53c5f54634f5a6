"""Every `tensorflow_model_server` flag tfgate accepts: TF Serving's names, kinds, defaults and
help texts, tfgate's own flags beside them, and the flags it accepts but ignores.

Configuration position: settings/settings.py parses argv against this table and builds the
typed flag model from it; scripts/flag_table.py renders the README's flag table from it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any


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
    # grpc core's server keepalive and ping-abuse policy and its defaults: the h2 transport
    # enforces them itself, grpc.aio gets them as channel arguments (rpc/server.py).
    Flag(
        "grpc_keepalive_time_seconds",
        float,
        7200.0,
        "tfgate: with a call open and nothing received from the client for this "
        "long, the server sends a keepalive PING; 0 = never (grpc.keepalive_time_ms).",
    ),
    Flag(
        "grpc_keepalive_timeout_seconds",
        float,
        20.0,
        "tfgate: nothing received this long after a keepalive PING (or no ACK "
        "within max(this, 60 s)): GOAWAY ENHANCE_YOUR_CALM, connection closed "
        "(grpc.keepalive_timeout_ms).",
    ),
    Flag(
        "grpc_min_recv_ping_interval_without_data_seconds",
        float,
        300.0,
        "tfgate: a client PING sooner than this after its previous one, with no "
        "HEADERS/DATA/WINDOW_UPDATE sent by the server in between, is a strike; 2 hours while "
        "no call is open (grpc.http2.min_ping_interval_without_data_ms).",
    ),
    Flag(
        "grpc_max_ping_strikes",
        int,
        2,
        "tfgate: strikes allowed; the next one gets GOAWAY ENHANCE_YOUR_CALM "
        "\"too_many_pings\" and the connection is closed; 0 = never "
        "(grpc.http2.max_ping_strikes).",
    ),
    Flag(
        "grpc_keepalive_permit_without_calls",
        bool,
        False,
        "tfgate: keepalive PINGs with no call open are fine: the server sends "
        "its own then too, and a client's are held to "
        "--grpc_min_recv_ping_interval_without_data_seconds instead of 2 hours "
        "(grpc.keepalive_permit_without_calls).",
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
        "h2",
        "tfgate: h2 (tfgate's asyncio HTTP/2 gRPC server, a quarter to a half of grpc.aio's "
        "gateway CPU per call) or grpcio (grpc.aio, on gRPC's C core); "
        "--grpc_channel_arguments implies grpcio.",
    ),
    Flag(
        "grpc_max_concurrent_streams",
        int,
        256,
        "tfgate: HTTP/2 MAX_CONCURRENT_STREAMS the h2 gRPC server advertises and enforces per "
        "connection (streams beyond it: RST_STREAM REFUSED_STREAM).",
    ),
    Flag(
        "grpc_max_buffered_request_bytes",
        int,
        0,
        "tfgate: request bytes the h2 gRPC server holds for all connections together (partly "
        "received unary messages, streaming messages waiting for their handler); a call whose "
        "DATA would pass it gets RESOURCE_EXHAUSTED. 0: 1 GiB, or the largest request message "
        "plus 64 MiB when that is more; a value set must be at least that sum (startup fails "
        "otherwise).",
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
