"""The example configs in config/ parse with tfgate's loaders (users copy them)."""

from __future__ import annotations

import pathlib

from app.settings import model_config
from app.settings.settings import load_settings

CONFIG = pathlib.Path(__file__).resolve().parents[3] / "config"


def test_example_configs_parse() -> None:
    models = model_config.load_model_server_config(str(CONFIG / "models.config"))
    assert [m.name for m in models] == ["half_plus_two"]
    params = model_config.load_batching_parameters(str(CONFIG / "batching.config"))
    assert params.max_batch_size == 256
    monitoring = model_config.load_monitoring_config(str(CONFIG / "monitoring.config"))
    assert monitoring.prometheus_config.enable
    model_config.load_ssl_config(str(CONFIG / "ssl.config.example"))


def test_example_toml_loads() -> None:
    import os

    cwd = os.getcwd()
    os.chdir(CONFIG.parent)
    try:
        settings = load_settings([f"--config={CONFIG / 'tfgate.toml'}"])
    finally:
        os.chdir(cwd)
    assert settings.enable_batching is True
    assert settings.batching_tables["half_plus_two"].max_batch_size == 64
