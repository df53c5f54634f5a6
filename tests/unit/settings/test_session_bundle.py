"""The SessionBundleConfig tfgate loads with: from flags (server.cc's rules) or from
--platform_config_file, and the ConfigProto reaching the worker's sessions."""

from __future__ import annotations

import logging
import pathlib
import re

import pytest
from google.protobuf import text_format

from app.core import protos
from app.core.types import ServableId
from app.serving.batching_policy import BatchingPolicy
from app.settings.model_config import ConfigError
from app.settings.session_bundle import parse_platform_config, session_bundle_settings
from app.settings.settings import SettingsError, load_settings


def _config_proto(data: bytes) -> protos.config_pb2.ConfigProto:
    return protos.config_pb2.ConfigProto.FromString(data)


def _platform_config(legacy_config: str) -> str:
    return (
        'platform_configs { key: "tensorflow" value { source_adapter_config {\n'
        "  [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {\n"
        f"    legacy_config {{ {legacy_config} }}\n"
        "  }\n"
        "} } }\n"
    )


def test_flags_build_server_cc_defaults() -> None:
    bundle = session_bundle_settings(load_settings(["--model_base_path=/m"]))
    assert bundle.batching is None
    assert bundle.saved_model_tags == ("serve",)
    assert (bundle.enable_model_warmup, bundle.warmup_iterations) == (True, 0)
    config = _config_proto(bundle.session_config)
    assert config.allow_soft_placement  # GPU-pinned exports still load on CPU workers
    assert config.intra_op_parallelism_threads == config.inter_op_parallelism_threads == 0
    batching = session_bundle_settings(
        load_settings(["--model_base_path=/m", "--enable_batching"])
    ).batching
    assert batching is not None and batching.thread_pool_name == "model_server_batch_threads"


def test_session_config_file_with_flags_on_top(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "session.pbtxt"
    path.write_text(
        "intra_op_parallelism_threads: 3 inter_op_parallelism_threads: 2 "
        "gpu_options { allow_growth: true per_process_gpu_memory_fraction: 0.25 }"
    )
    from_file = _config_proto(session_bundle_settings(load_settings(
        ["--model_base_path=/m", f"--tensorflow_session_config_file={path}"]
    )).session_config)
    assert (from_file.intra_op_parallelism_threads, from_file.inter_op_parallelism_threads) == (3, 2)
    assert from_file.gpu_options.allow_growth
    assert from_file.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.25)
    assert from_file.allow_soft_placement

    overridden = _config_proto(session_bundle_settings(load_settings([
        "--model_base_path=/m", f"--tensorflow_session_config_file={path}",
        "--tensorflow_intra_op_parallelism=1", "--per_process_gpu_memory_fraction=0.5",
    ])).session_config)
    assert (overridden.intra_op_parallelism_threads, overridden.inter_op_parallelism_threads) == (
        1, 2,
    )
    assert overridden.gpu_options.per_process_gpu_memory_fraction == pytest.approx(0.5)
    assert overridden.gpu_options.allow_growth

    both = _config_proto(session_bundle_settings(load_settings(
        ["--model_base_path=/m", "--tensorflow_session_parallelism=4"]
    )).session_config)
    assert (both.intra_op_parallelism_threads, both.inter_op_parallelism_threads) == (4, 4)


def test_bad_session_config_file_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "session.pbtxt"
    path.write_text("intra_op_parallelism_threads: lots")
    settings = load_settings(["--model_base_path=/m", f"--tensorflow_session_config_file={path}"])
    with pytest.raises(ConfigError, match=re.escape(f"Failed to read session config file: {path}")):
        session_bundle_settings(settings)
    missing = load_settings(
        ["--model_base_path=/m", f"--tensorflow_session_config_file={tmp_path / 'none'}"]
    )
    with pytest.raises(ConfigError, match="Unable to read config file"):
        session_bundle_settings(missing)


def test_platform_config_replaces_the_flags(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "platform.pbtxt"
    path.write_text(_platform_config(
        "session_config { intra_op_parallelism_threads: 1 gpu_options { allow_growth: true } } "
        "batching_parameters { max_batch_size { value: 16 } allowed_batch_sizes: 8 "
        "allowed_batch_sizes: 16 } "
        "enable_model_warmup: true model_warmup_options { num_request_iterations { value: 3 } } "
        'saved_model_tags: "serve" saved_model_tags: "gpu" enable_per_model_batching_params: true'
    ))
    caplog.set_level(logging.WARNING)
    bundle = session_bundle_settings(load_settings([
        "--model_base_path=/m", f"--platform_config_file={path}",
        "--tensorflow_intra_op_parallelism=4", "--saved_model_tags=other",
    ]))
    assert bundle.batching is not None
    assert (bundle.batching.max_batch_size, bundle.batching.allowed_batch_sizes) == (16, (8, 16))
    assert bundle.per_model_batching
    assert bundle.saved_model_tags == ("serve", "gpu")
    assert (bundle.enable_model_warmup, bundle.warmup_iterations) == (True, 3)
    config = _config_proto(bundle.session_config)
    assert config.intra_op_parallelism_threads == 1  # the flag's 4 has no effect
    assert config.gpu_options.allow_growth and config.allow_soft_placement
    assert "--saved_model_tags, --tensorflow_intra_op_parallelism have no effect" in caplog.text


def test_platform_config_defaults_are_proto3_defaults(tmp_path: pathlib.Path) -> None:
    """An empty SessionBundleConfig: no batching, warmup off (the field defaults to false),
    the SavedModel loader's "serve" tag."""
    bundle = parse_platform_config(_platform_config(""), "p.pbtxt")
    assert bundle.batching is None
    assert bundle.enable_model_warmup is False
    assert bundle.saved_model_tags == ("serve",)
    policy = BatchingPolicy(bundle, {})
    assert policy(ServableId("m", 1)) is None


def test_platform_config_errors() -> None:
    with pytest.raises(ConfigError, match=re.escape("Invalid protobuf file: 'p.pbtxt'")):
        parse_platform_config("platform_configs { nonsense: 1 }", "p.pbtxt")
    with pytest.raises(ConfigError, match="tfgate serves the tensorflow platform only"):
        parse_platform_config(
            'platform_configs { key: "tensorflow" value {} } '
            'platform_configs { key: "other" value {} }',
            "p.pbtxt",
        )
    with pytest.raises(ConfigError, match='no platform_configs entry for "tensorflow"'):
        parse_platform_config("", "p.pbtxt")
    wrong_type = (
        'platform_configs { key: "tensorflow" value { source_adapter_config {\n'
        "  [type.googleapis.com/tensorflow.serving.BatchingParameters] {}\n"
        "} } }"
    )
    with pytest.raises(ConfigError):
        parse_platform_config(wrong_type, "p.pbtxt")
    with pytest.raises(ConfigError, match="is empty; tfgate reads"):
        parse_platform_config('platform_configs { key: "tensorflow" value {} }', "p.pbtxt")
    bad_batching = _platform_config(
        "batching_parameters { max_batch_size { value: 16 } allowed_batch_sizes: 8 }"
    )
    with pytest.raises(ConfigError, match="Last entry in allowed_batch_sizes must match"):
        parse_platform_config(bad_batching, "p.pbtxt")


def test_platform_config_warns_about_fields_without_effect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    parse_platform_config(
        _platform_config('session_target: "grpc://x" prefer_tflite_model: true'), "p.pbtxt"
    )
    assert "SessionBundleConfig.session_target has no effect" in caplog.text
    assert "SessionBundleConfig.prefer_tflite_model has no effect" in caplog.text


def test_batching_file_without_enable_batching_is_allowed_with_a_platform_config(
    tmp_path: pathlib.Path,
) -> None:
    """server.cc checks --batching_parameters_file against --enable_batching only when it
    builds the SessionBundleConfig from flags."""
    with pytest.raises(SettingsError, match="is set without setting server_options"):
        load_settings(["--model_base_path=/m", "--batching_parameters_file=/b"])
    load_settings([
        "--model_base_path=/m", "--batching_parameters_file=/b",
        f"--platform_config_file={tmp_path / 'p.pbtxt'}",
    ])


def test_text_format_of_the_docs_example_parses() -> None:
    """docs/operations.md's platform config example is a valid PlatformConfigMap."""
    docs = (pathlib.Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    start = docs.index("```\nplatform_configs {")
    example = docs[start + 4 : docs.index("```", start + 4)]
    platform_map = protos.platform_config_pb2.PlatformConfigMap()
    text_format.Parse(example, platform_map)
    bundle = parse_platform_config(example, "example")
    assert bundle.batching is not None


def test_thread_spinning_off_unless_asked_for(tmp_path: pathlib.Path) -> None:
    """tfgate's one change to TF's session defaults, on every path the config can take."""
    def config(*argv: str) -> protos.config_pb2.ConfigProto:
        settings = load_settings(["--model_base_path=/m", *argv])
        return _config_proto(session_bundle_settings(settings).session_config)

    assert config().experimental.disable_thread_spinning
    assert not config("--tensorflow_thread_spinning").experimental.disable_thread_spinning
    session_file = tmp_path / "session.pbtxt"
    session_file.write_text("intra_op_parallelism_threads: 2 experimental { use_tfrt: false }")
    from_file = config(f"--tensorflow_session_config_file={session_file}")
    assert from_file.experimental.disable_thread_spinning
    assert from_file.intra_op_parallelism_threads == 2
    platform_file = tmp_path / "platform.pbtxt"
    platform_file.write_text(_platform_config(
        "session_config { experimental { disable_thread_spinning: true } }"
    ))
    assert config(f"--platform_config_file={platform_file}").experimental.disable_thread_spinning
    # With the flag the file is used as written, its own disable_thread_spinning included.
    spinning = config(f"--platform_config_file={platform_file}", "--tensorflow_thread_spinning")
    assert spinning.experimental.disable_thread_spinning
    assert not config(
        f"--tensorflow_session_config_file={session_file}", "--tensorflow_thread_spinning"
    ).experimental.disable_thread_spinning


def test_worker_sessions_use_the_gateway_config(model_zoo) -> None:  # type: ignore[no-untyped-def]
    """The serialized ConfigProto the pool passes (--session-config) is what a worker's
    loader creates each session with."""
    from proto import worker_pb2
    from workers.loader import Loader

    config = protos.config_pb2.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=1
    )
    loader = Loader(config.SerializeToString())
    try:
        runner = loader._build(worker_pb2.LoadRequest(path=str(model_zoo.base_path("tiny") / "1")))
        try:
            assert runner.session_config.intra_op_parallelism_threads == 1  # type: ignore[attr-defined]
            assert runner.session_config.inter_op_parallelism_threads == 1  # type: ignore[attr-defined]
        finally:
            runner.close()  # type: ignore[attr-defined]
    finally:
        assert loader.close(30)
