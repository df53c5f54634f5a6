"""Pure parts of model sync, table-driven: manifest parsing, the sync plan, backoff, config
validation, status/admin fields."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib

import pytest

from app.settings.config_file import ConfigFile, SyncTable
from app.settings.settings import SettingsError
from app.sync.config import load_sync_configs
from app.sync.loop import ModelSync, backoff_seconds
from app.sync.manifest import (
    ManifestError,
    format_manifest,
    parse_manifest,
    publish,
    split_version_url,
)
from app.sync.storage import SourceOptions
from app.sync.sync_pass import PassResult, SyncConfig, VersionFailure, plan_sync

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{A}  saved_model.pb\n", {"saved_model.pb": A}),
        (f"{A} *saved_model.pb\n", {"saved_model.pb": A}),  # md5sum --binary
        (f"{A.upper()}  ./variables/variables.index\r\n", {"variables/variables.index": A}),
        (f"\n# comment\n{A}  a\n{B}  b/c d\n", {"a": A, "b/c d": B}),
    ],
)
def test_parse_manifest(text: str, expected: dict[str, str]) -> None:
    assert parse_manifest(text.encode()) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "lists no files"),
        (f"{A} saved_model.pb", "expected '<md5>  <relative path>'"),
        ("xyz  saved_model.pb", "expected"),
        (f"{A}  /etc/passwd", "must be relative"),
        (f"{A}  ../../etc/passwd", "leaves the version directory"),
        (f"{A}  a/../../b", "leaves the version directory"),
        (f"{A}  a\n{B}  ./a", "listed twice"),
        (f"{A}  MD5SUMS", "cannot list itself"),
        (f"\\{A}  a\\nb", "escaped file names"),
    ],
)
def test_parse_manifest_rejects(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text.encode())


def test_manifest_round_trip() -> None:
    entries = {"variables/variables.index": A, "saved_model.pb": B}
    data = format_manifest(entries)
    assert data.decode().splitlines()[0] == f"{B}  saved_model.pb"  # sorted, md5sum format
    assert parse_manifest(data) == entries


def test_non_utf8_manifest() -> None:
    with pytest.raises(ManifestError, match="not UTF-8"):
        parse_manifest(b"\xff\xfe")


@pytest.mark.parametrize(
    ("url", "root", "version"),
    [
        ("s3://b/models/m/3", "s3://b/models/m", 3),
        ("s3://b/models/m/0003/", "s3://b/models/m", 3),
        ("file:///srv/m/12", "file:///srv/m", 12),
    ],
)
def test_split_version_url(url: str, root: str, version: int) -> None:
    assert split_version_url(url) == (root, version)


def test_split_version_url_needs_a_number() -> None:
    with pytest.raises(ValueError, match="version number"):
        split_version_url("s3://b/models/m")


# remote: version -> digest (None: no manifest); recorded; local; mirror ->
# (fetch, adopt, unchanged, no_manifest, delete)
PLAN_CASES = [
    ("new versions, newest first", {1: "a", 2: "b"}, {}, set(), False, ((2, 1), set(), (), (), ())),
    ("unchanged manifest skips", {1: "a"}, {1: "a"}, {1}, False, ((), set(), (1,), (), ())),
    ("changed manifest refetches", {1: "b"}, {1: "a"}, {1}, False, ((1,), set(), (), (), ())),
    ("deleted locally refetches", {1: "a"}, {1: "a"}, set(), False, ((1,), set(), (), (), ())),
    ("unrecorded local copy: adopt", {1: "a"}, {}, {1}, False, ((1,), {1}, (), (), ())),
    ("no manifest yet", {1: "a", 2: None}, {1: "a"}, {1}, False, ((), set(), (1,), (2,), ())),
    ("remote deletion kept", {2: "b"}, {1: "a", 2: "b"}, {1, 2}, False, ((), set(), (2,), (), ())),
    (
        "remote deletion mirrored",
        {2: "b"},
        {1: "a", 2: "b"},
        {1, 2},
        True,
        ((), set(), (2,), (), (1,)),
    ),
    (
        "hand-placed versions never deleted",
        {2: "b"},
        {2: "b"},
        {1, 2},
        True,
        ((), set(), (2,), (), ()),
    ),
    ("empty listing never mirrored", {}, {1: "a"}, {1}, True, ((), set(), (), (), ())),
]


@pytest.mark.parametrize(
    ("remote", "recorded", "local", "mirror", "expected"),
    [c[1:] for c in PLAN_CASES],
    ids=[c[0] for c in PLAN_CASES],
)
def test_plan_sync(remote, recorded, local, mirror, expected) -> None:  # type: ignore[no-untyped-def]
    plan = plan_sync(remote, recorded, local, mirror)
    fetch, adopt, unchanged, no_manifest, delete = expected
    assert plan.fetch == fetch
    assert plan.adopt == adopt
    assert plan.unchanged == unchanged
    assert plan.no_manifest == no_manifest
    assert plan.delete == delete


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [
        (1, 0.0, 0.5),  # half fixed ...
        (1, 0.999999, 1.0),  # ... half random
        (2, 0.0, 1.0),
        (3, 1.0, 4.0),
        (6, 1.0, 30.0),  # capped at the maximum
        (10_000, 0.5, 22.5),  # no overflow for long outages
    ],
)
def test_backoff_seconds(failures: int, jitter: float, expected: float) -> None:
    assert backoff_seconds(failures, 1.0, 30.0, jitter) == pytest.approx(expected, rel=1e-5)


BASE = {"m": "/srv/models/m"}


def tables(document: dict) -> dict[str, SyncTable]:
    """The typed sync tables of a TOML document (validated as the server validates it)."""
    return ConfigFile.parse(document, "tfgate.toml").sync_tables()


@pytest.mark.parametrize(
    ("sync", "message"),
    [
        ({}, "source is required"),
        ({"source": "ftp://x/m"}, "unsupported scheme"),
        ({"source": "s3://b/m", "poll_seconds": 0}, "poll_seconds must be > 0"),
        ({"source": "s3://b/m", "poll_seconds": "30"}, "poll_seconds must be a number"),
        ({"source": "s3://b/m", "mirror_deletes": "yes"}, "mirror_deletes must be true or false"),
        ({"source": "s3://b/m", "backups_to_keep": -1}, "must be >= 0"),
        ({"source": "s3://b/m", "backups_to_keep": 1.5}, "backups_to_keep must be an integer"),
        ({"source": "s3://b/m", "pol_seconds": 5}, "unknown setting.s. pol_seconds"),
        ({"source": "webhdfs://nn:1/m", "endpoints": "nn:1"}, "endpoints must be a list"),
        ({"source": "webhdfs://nn:1/m", "endpoints": [1]}, "endpoints must be a list of"),
        ({"source": "s3://b/m", "webhook_url": "ftp://x"}, "must be an http.s. URL"),
        ({"source": "s3://b/m", "timeout_seconds": -1}, "timeout_seconds must be > 0"),
    ],
)
def test_sync_config_rejects(sync: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=r"\[models\.m\.sync\]: .*" + message):
        load_sync_configs(tables({"models": {"m": {"sync": sync}}}), BASE)


def test_sync_table_of_a_model_not_configured_yet() -> None:
    """Kept for a config reload that adds the model: no SyncConfig now, but validated."""
    assert load_sync_configs(tables({"models": {"other": {"sync": {"source": "s3://b/m"}}}}), BASE) == []
    with pytest.raises(SettingsError, match=r"\[models\.other\.sync\]: unknown setting"):
        load_sync_configs(tables({"models": {"other": {"sync": {"source": "s3://b/m", "x": 1}}}}), BASE)


async def wait_for_path(path: pathlib.Path) -> None:
    for _ in range(200):
        if path.exists():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} did not appear in 10 s")


async def test_update_starts_restarts_and_stops_loops(tmp_path: pathlib.Path) -> None:
    """What a model config reload does to sync: a model that is now configured starts
    syncing, a changed base_path restarts its loop there, a model that left stops."""
    version = tmp_path / "export"
    version.mkdir()
    (version / "saved_model.pb").write_bytes(b"graph")
    source = SourceOptions(f"file://{tmp_path / 'remote' / 'm'}")
    publish(str(version), f"{source.url}/1", source)
    syncer = ModelSync([])
    syncer.start()
    try:
        config = SyncConfig("m", str(tmp_path / "base"), source, poll_seconds=60.0)
        await syncer.update([config])
        await wait_for_path(tmp_path / "base" / "1" / "saved_model.pb")
        assert syncer.describe("m")["sync"]["source"] == source.url
        status = syncer.status["m"]
        await syncer.update([config])  # unchanged: the same loop goes on
        assert syncer.status["m"] is status
        moved = dataclasses.replace(config, base_path=str(tmp_path / "moved"))
        await syncer.update([moved])
        await wait_for_path(tmp_path / "moved" / "1" / "saved_model.pb")
        await syncer.update([])
        assert syncer.describe("m") == {} and not syncer.configs
    finally:
        await syncer.close()
    # After close() (server shutdown), a late reload starts nothing.
    await syncer.update([config])
    assert syncer.describe("m") == {}


def test_sync_config_needs_a_local_base_path() -> None:
    with pytest.raises(SettingsError, match="must be a local directory"):
        load_sync_configs(tables({"models": {"m": {"sync": {"source": "s3://b/m"}}}}), {"m": "s3://b/m"})


def test_sync_config_defaults_and_values() -> None:
    (plain,) = load_sync_configs(tables({"models": {"m": {"sync": {"source": "s3://b/m"}}}}), BASE)
    assert (plain.poll_seconds, plain.retry_max_seconds, plain.backups_to_keep) == (30, 30, 2)
    assert (plain.mirror_deletes, plain.bandwidth_bytes_per_second) == (False, 0)
    section = {
        "source": "webhdfs://nn1:9870/models/m",
        "endpoints": ["nn1:9870", "nn2:9870"],
        "poll_seconds": 10,
        "bandwidth_bytes_per_second": 1_000_000,
        "timeout_seconds": 5,
        "mirror_deletes": True,
        "backups_to_keep": 0,
        "webhook_url": "http://127.0.0.1:9/hook",
    }
    other = {"batching": {"max_batch_size": 8}}  # other components' tables are left alone
    configs = load_sync_configs(tables({"models": {"m": {"sync": section}, "n": other}}), BASE)
    (config,) = configs
    assert config.base_path == "/srv/models/m"
    assert config.source.endpoints == ("nn1:9870", "nn2:9870")
    assert config.source.timeout_seconds == 5.0
    assert config.retry_max_seconds == 10.0
    assert (config.mirror_deletes, config.backups_to_keep) == (True, 0)


def test_status_for_admin_listing() -> None:
    (config,) = load_sync_configs(tables({"models": {"m": {"sync": {"source": "s3://b/m"}}}}), BASE)
    syncer = ModelSync([config])
    assert syncer.describe("other") == {}
    failed = PassResult("m", "s3://b/m", failures=[VersionFailure(3, "md5_mismatch", "bad")])
    syncer.record(failed)
    sync = syncer.describe("m")["sync"]
    assert sync["source"] == "s3://b/m"
    assert sync["last_success"] is None
    assert sync["last_error"]["reason"] == "md5_mismatch"
    assert sync["last_error"]["version"] == 3
    assert sync["consecutive_failures"] == 1
    syncer.record(PassResult("m", "s3://b/m", downloaded=[4]))
    sync = syncer.describe("m")["sync"]
    assert sync["last_success"] is not None
    assert sync["consecutive_failures"] == 0
    assert sync["last_error"]["version"] == 3  # kept as history, with its time
    assert sync["versions_synced"] == [4]


def test_missing_remote_root_warns_once_and_shows_in_the_listing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (config,) = load_sync_configs(tables({"models": {"m": {"sync": {"source": "s3://typo/m"}}}}), BASE)
    syncer = ModelSync([config])
    caplog.set_level(logging.INFO, logger="tfgate")
    for _ in range(3):
        syncer.record(PassResult("m", "s3://typo/m", remote_missing=True))
    warnings = [r for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "s3://typo/m does not exist (no such bucket or prefix)" in warnings[0].getMessage()
    sync = syncer.describe("m")["sync"]
    assert sync["remote_missing"] is True and sync["consecutive_failures"] == 0
    syncer.record(PassResult("m", "s3://typo/m", downloaded=[1]))
    assert syncer.describe("m")["sync"]["remote_missing"] is False
    assert "s3://typo/m exists now" in caplog.text
