"""Flag parsing (TF Serving's syntax and startup errors) and TF Serving's config files."""

from __future__ import annotations

import pathlib
import re

import pytest

from app.settings import model_config
from app.settings.model_config import ConfigError, PolicyKind
from app.settings.settings import SettingsError, load_settings, parse_flags


def test_flag_defaults_match_tf_serving() -> None:
    values, ignored, unknown = parse_flags([])
    assert values["port"] == 8500
    assert values["rest_api_port"] == 0
    assert values["rest_api_timeout_in_ms"] == 30000
    assert values["file_system_poll_wait_seconds"] == 1
    assert values["max_num_load_retries"] == 5
    assert values["load_retry_interval_micros"] == 60_000_000
    assert values["model_name"] == "default"
    assert values["saved_model_tags"] == "serve"
    assert values["enable_model_warmup"] is True
    assert values["enable_batching"] is False
    assert (ignored, unknown) == ([], [])


@pytest.mark.parametrize(
    ("argv", "name", "value"),
    [
        (["--enable_batching"], "enable_batching", True),
        (["--enable_batching=false"], "enable_batching", False),
        (["--enable_batching=true"], "enable_batching", True),
        (["--port=9000"], "port", 9000),
        (["--port", "9001"], "port", 9001),
        (["--model_name=a=b"], "model_name", "a=b"),
        (["-rest_api_port=1"], "rest_api_port", 1),
        (["--per_process_gpu_memory_fraction=0.5"], "per_process_gpu_memory_fraction", 0.5),
    ],
)
def test_flag_syntax(argv: list[str], name: str, value: object) -> None:
    assert parse_flags(argv)[0][name] == value


def test_ignored_and_unknown_flags_are_reported_not_fatal() -> None:
    _, ignored, unknown = parse_flags(["--prefer_tflite_model=true", "--bogus=1", "stray"])
    assert ignored == ["prefer_tflite_model"]
    assert unknown == ["--bogus=1", "stray"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port=abc", "--model_base_path=/m"], "Illegal value 'abc' for flag --port"),
        (["--enable_batching=maybe", "--model_base_path=/m"], "Illegal value 'maybe'"),
        # a flag without its value never swallows the next flag
        (["--model_base_path=/m", "--model_name", "--port=9000"],
         "Missing value for flag --model_name"),
        ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (["--port=0", "--model_base_path=/m"], "At least one of server_options.grpc_port"),
        (["--model_base_path=/m", "--batching_parameters_file=/b"],
         "server_options.batching_parameters_file is set without setting "
         "server_options.enable_batching to true."),
        (["--model_base_path=/m", "--tensorflow_session_parallelism=2",
          "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1"],
         "Either configure server_options.tensorflow_session_parallelism or"),
    ],
)
def test_startup_errors(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(argv)


def test_toml_server_section_and_flag_override(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "tfgate.toml"
    config.write_text("[server]\nnum_cpu_workers = 2\nenable_batching = true\nport = 9100\n")
    settings = load_settings([f"--config={config}", "--model_base_path=/m", "--port=9200"])
    assert settings.num_cpu_workers == 2
    assert settings.enable_batching is True
    assert settings.port == 9200  # flags override the file


def test_toml_errors(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(SettingsError, match="Invalid TOML"):
        load_settings([f"--config={bad}", "--model_base_path=/m"])
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[server]\nnot_a_flag = 1\n")
    with pytest.raises(SettingsError, match="unknown \\[server\\] setting 'not_a_flag'"):
        load_settings([f"--config={unknown}", "--model_base_path=/m"])


GOOD = """
model_config_list {
  config { name: "a" base_path: "/models/a" model_platform: "tensorflow" }
  config {
    name: "b" base_path: "/models/b" model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 3 } }
    version_labels { key: "stable" value: 1 }
  }
  config { name: "c" base_path: "/models/c" model_type: TENSORFLOW model_version_policy { all {} } }
  config {
    name: "d" base_path: "/models/d" model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
}
"""


def test_model_server_config_parses_policies_and_labels() -> None:
    configs = {c.name: c for c in model_config.parse_model_server_config(GOOD)}
    assert configs["a"].policy.kind is PolicyKind.LATEST and configs["a"].policy.num_versions == 1
    assert configs["b"].policy.versions == (1, 3)
    assert configs["b"].labels == (("stable", 1),)
    assert configs["c"].policy.kind is PolicyKind.ALL
    assert configs["c"].platform == "tensorflow"  # from the deprecated model_type
    assert configs["d"].policy.num_versions == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "improperly formatted file",
            "Error parsing text-format tensorflow.serving.ModelServerConfig",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" } config { name: "a" base_path: "/y" } }',
            "Illegal to list model a multiple times in config list",
        ),
        (
            'model_config_list { config { name: "a" base_path: "rel/path" } }',
            "Expected model a to have an absolute path or URI; got base_path()=rel/path",
        ),
        (  # the list is validated before any platform (ServerCore's order)
            'model_config_list { config { name: "a" base_path: "/x" } '
            'config { name: "b" base_path: "rel" } }',
            "Expected model b to have an absolute path or URI; got base_path()=rel",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" } }',
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform.",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" model_type: TENSORFLOW '
            'model_platform: "tensorflow" } }',
            "Illegal setting both ModelServerConfig::model_type (deprecated) and "
            "ModelServerConfig::model_platform.",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" model_type: OTHER } }',
            "ModelServerConfig::model_type choice 2 not supported.",
        ),
    ],
)
def test_model_server_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        model_config.parse_model_server_config(text)
    assert message in str(info.value)


def test_tf_serving_fixture_configs(tfs_testdata: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="Error parsing text-format"):
        model_config.load_model_server_config(str(tfs_testdata / "fixtures/bad_model_config.txt"))
    params = model_config.load_batching_parameters(
        str(tfs_testdata / "fixtures/batching_config.txt")
    )
    assert (params.max_batch_size, params.batch_timeout_micros) == (128, 0)
    assert (params.max_enqueued_batches, params.num_batch_threads) == (1000000, 8)
    monitoring = model_config.load_monitoring_config(
        str(tfs_testdata / "fixtures/monitoring_config.txt")
    )
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_batching_parameters_defaults_and_errors() -> None:
    params = model_config.parse_batching_parameters("")
    assert (params.max_batch_size, params.batch_timeout_micros, params.max_enqueued_batches) == (
        1000,
        0,
        10,
    )
    params = model_config.parse_batching_parameters(
        "max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 8 "
        "enable_large_batch_splitting { value: true } max_execution_batch_size { value: 4 } "
        "pad_variable_length_inputs: true"
    )
    assert params.allowed_batch_sizes == (2, 8)
    assert params.execution_batch_size == 4 and params.pad_variable_length_inputs
    with pytest.raises(ConfigError) as info:
        model_config.parse_batching_parameters(
            "max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4"
        )
    assert str(info.value) == (
        "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"
    )
    with pytest.raises(ConfigError, match="Error parsing text-format BatchingParameters"):
        model_config.parse_batching_parameters("max_batch_size: oops")


def _policy(argv: list[str]):  # type: ignore[no-untyped-def]
    from app.serving.batching_policy import BatchingPolicy
    from app.settings.session_bundle import session_bundle_settings

    settings = load_settings(argv)
    return BatchingPolicy(session_bundle_settings(settings), settings.batching_tables)


def test_batching_thread_pool_name_follows_server_cc(tmp_path: pathlib.Path) -> None:
    """The name labels the batching metrics: "model_server_batch_threads" for --enable_batching
    without a file, the file's thread_pool_name (default "batch_threads") with one."""
    from app.core.types import ServableId

    servable = ServableId("m", 1)
    plain = _policy(["--model_base_path=/m", "--enable_batching"])
    assert plain(servable).thread_pool_name == "model_server_batch_threads"  # type: ignore[union-attr]
    for text, name in (("", "batch_threads"), ('thread_pool_name { value: "gpu_pool" }', "gpu_pool")):
        path = tmp_path / "batching.pbtxt"
        path.write_text(text)
        policy = _policy(
            ["--model_base_path=/m", "--enable_batching", f"--batching_parameters_file={path}"]
        )
        assert policy(servable).thread_pool_name == name  # type: ignore[union-attr]


def test_metrics_path_flag_and_toml(tmp_path: pathlib.Path) -> None:
    assert load_settings(["--model_base_path=/m"]).metrics_path == "/metrics"
    assert load_settings(["--model_base_path=/m", "--metrics_path="]).metrics_path == ""
    assert load_settings(["--model_base_path=/m", "--metrics_path=/x"]).metrics_path == "/x"
    config = tmp_path / "tfgate.toml"
    config.write_text('[server]\nmetrics_path = ""\n')
    assert load_settings([f"--config={config}", "--model_base_path=/m"]).metrics_path == ""
    with pytest.raises(SettingsError, match="--metrics_path must be empty or start with /"):
        load_settings(["--model_base_path=/m", "--metrics_path=metrics"])


def test_grpc_transport_limits_flags() -> None:
    from app.rpc.server import MESSAGE_HEADROOM_BYTES, h2_limits

    settings = load_settings(["--model_base_path=/m", "--grpc_max_connections=10",
                      "--grpc_idle_timeout_seconds=1.5", "--grpc_handshake_timeout_seconds=2",
                      "--grpc_max_concurrent_streams=7"])
    limits = h2_limits(settings)
    assert (limits.max_connections, limits.idle_timeout_seconds,
            limits.handshake_timeout_seconds, limits.max_concurrent_streams) == (10, 1.5, 2.0, 7)
    # the receive limit grpc.aio serves with: the request tensor limit (the 64 MiB arena by
    # default) plus headroom for the rest of the message
    assert limits.max_receive_message_bytes == (64 << 20) + MESSAGE_HEADROOM_BYTES
    defaults = h2_limits(load_settings(["--model_base_path=/m"]))
    assert (defaults.max_connections, defaults.idle_timeout_seconds,
            defaults.handshake_timeout_seconds, defaults.max_concurrent_streams) == (
        4096, 300.0, 10.0, 256)


@pytest.mark.parametrize("flag", [
    "--grpc_max_connections=-1", "--grpc_max_connections=0", "--grpc_idle_timeout_seconds=-1",
    "--grpc_handshake_timeout_seconds=-0.5", "--grpc_handshake_timeout_seconds=0",
    "--grpc_max_concurrent_streams=0",
])
def test_grpc_transport_limits_are_validated(flag: str) -> None:
    with pytest.raises(SettingsError, match="--grpc_"):
        load_settings(["--model_base_path=/m", flag])


def test_grpc_max_buffered_request_bytes_reaches_the_h2_limits() -> None:
    from app.rpc.server import h2_limits

    assert h2_limits(load_settings(["--model_base_path=/m"])).max_buffered_request_bytes == 1 << 30
    settings = load_settings(["--model_base_path=/m", "--grpc_implementation=h2",
                              f"--grpc_max_buffered_request_bytes={200 << 20}"])
    assert h2_limits(settings).max_buffered_request_bytes == 200 << 20


def test_the_automatic_quota_grows_with_the_largest_message() -> None:
    """0 (the default): 1 GiB, or one largest message + 64 MiB when a large arena needs more,
    so raising --worker_arena_bytes alone never stops startup."""
    from app.rpc.server import h2_limits

    big = load_settings(["--model_base_path=/m", f"--worker_arena_bytes={1 << 30}"])
    assert h2_limits(big).max_buffered_request_bytes == (1 << 30) + (4 << 20) + (64 << 20)


def test_grpc_max_buffered_request_bytes_must_not_be_negative() -> None:
    with pytest.raises(SettingsError, match="--grpc_max_buffered_request_bytes must be positive"):
        load_settings(["--model_base_path=/m", "--grpc_max_buffered_request_bytes=-1"])


def test_grpc_max_buffered_request_bytes_must_hold_one_message_with_h2() -> None:
    # The largest message by default: the 64 MiB arena plus 4 MiB; plus 64 MiB of room.
    needed = (64 << 20) + (4 << 20) + (64 << 20)
    h2 = ["--model_base_path=/m", "--grpc_implementation=h2"]
    assert load_settings([*h2, f"--grpc_max_buffered_request_bytes={needed}"])
    with pytest.raises(SettingsError, match=(
            rf"--grpc_max_buffered_request_bytes={needed - 1} is too small: .*"
            rf"\({(68 << 20)} bytes, .* at least {needed}")):
        load_settings([*h2, f"--grpc_max_buffered_request_bytes={needed - 1}"])
    # A larger arena raises the bound past a value set: refused, not raised silently.
    with pytest.raises(SettingsError, match="at least 1145044992"):
        load_settings([*h2, f"--worker_arena_bytes={1 << 30}",
                       f"--grpc_max_buffered_request_bytes={1 << 30}"])
    # grpc.aio ignores the flag: no lower bound there (grpc core's quota applies).
    assert load_settings(["--model_base_path=/m", "--grpc_implementation=grpcio",
                          "--grpc_max_buffered_request_bytes=1"])
    assert load_settings([*h2, "--grpc_channel_arguments=a=1",
                          "--grpc_max_buffered_request_bytes=1"])
