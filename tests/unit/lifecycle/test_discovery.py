"""app.lifecycle.discovery: which directories are versions, and what a scan does with them."""

from __future__ import annotations

import os
import pathlib

import pytest

from app.lifecycle.discovery import Discovery, list_versions
from app.lifecycle.registry import Registry
from app.settings.model_config import ModelConfig


def test_only_ascii_int64_directory_names_are_versions(tmp_path: pathlib.Path) -> None:
    for name in ("1", "0007", "9223372036854775807", "9223372036854775808", "³", "٨", "1a",
                 "abc", "-5"):
        (tmp_path / name).mkdir()
    (tmp_path / "42").write_text("a file, not a version")
    assert sorted(list_versions(str(tmp_path)) or {}) == [1, 7, 9223372036854775807]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_base_path_is_like_a_missing_one(tmp_path: pathlib.Path) -> None:
    tmp_path.chmod(0)
    try:
        assert list_versions(str(tmp_path)) is None
    finally:
        tmp_path.chmod(0o755)


class Aspirer:
    """ServerCore's part in a scan: the versions found go into the registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.changed: list[str] = []

    def __call__(self, name: str, on_disk: dict[int, str], replaced: set[int]) -> None:
        self.registry.set_aspired_versions(name, on_disk, replaced=replaced)
        self.changed.append(name)


def test_scan_skips_odd_names_and_goes_on_to_the_next_model(tmp_path: pathlib.Path) -> None:
    registry = Registry()
    for name in ("a", "b"):
        (tmp_path / name / "1").mkdir(parents=True)
    (tmp_path / "a" / "²").mkdir()
    registry.configure([ModelConfig(n, str(tmp_path / n)) for n in ("a", "b")])
    aspirer = Aspirer(registry)
    Discovery(registry, aspirer, 1).scan()
    assert aspirer.changed == ["a", "b"]
    assert set(registry.models["a"].on_disk) == {1}
    assert set(registry.models["b"].on_disk) == {1}


def test_an_empty_name_list_scans_nothing(tmp_path: pathlib.Path) -> None:
    registry = Registry()
    (tmp_path / "a" / "1").mkdir(parents=True)
    registry.configure([ModelConfig("a", str(tmp_path / "a"))])
    aspirer = Aspirer(registry)
    discovery = Discovery(registry, aspirer, 1)
    discovery.scan([])
    assert aspirer.changed == []
    registry.configure([])  # "a" dropped: never scanned again
    discovery.scan()
    assert aspirer.changed == []
