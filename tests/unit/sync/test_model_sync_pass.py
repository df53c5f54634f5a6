"""Whole sync passes against a file:// store on the real local file system: what lands in
the base path, what is refused, what is kept as backup, what is cleaned up."""

from __future__ import annotations

import errno
import json
import os
import pathlib

import pytest

from app.sync import sync_pass as model_sync
from app.sync.manifest import publish
from app.sync.storage import RemoteStore, SourceOptions
from app.sync.sync_pass import SyncConfig, exchange_dirs, sync_once

FILES = {"saved_model.pb": b"graph-v1", "variables/variables.index": b"index", "assets/v": b""}


def write_tree(root: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


class World:
    """A remote model root (file://), a local base path, and the config joining them."""

    def __init__(self, tmp: pathlib.Path, **overrides: object) -> None:
        self.tmp = tmp
        self.remote = tmp / "remote" / "m"
        self.base = tmp / "base" / "m"
        self.config = SyncConfig(
            "m",
            str(self.base),
            SourceOptions(f"file://{self.remote}"),
            **overrides,  # type: ignore[arg-type]
        )
        self._n = 0

    def publish(self, version: int, files: dict[str, bytes] = FILES) -> None:
        self._n += 1
        local = write_tree(self.tmp / f"local{self._n}", files)
        publish(str(local), f"file://{self.remote}/{version}", self.config.source)

    def sync(self) -> model_sync.PassResult:
        return sync_once(self.config)

    def numeric_dirs(self) -> list[str]:
        return sorted(p.name for p in self.base.iterdir() if p.name.isdigit())

    def partials(self) -> list[str]:
        partial = self.base / ".partial"
        return sorted(os.listdir(partial)) if partial.exists() else []

    def backups(self) -> list[str]:
        backup = self.base / ".backup"
        return sorted(os.listdir(backup)) if backup.exists() else []


@pytest.fixture
def world(tmp_path: pathlib.Path) -> World:
    return World(tmp_path)


def test_new_version_arrives_verified(world: World) -> None:
    world.publish(1)
    assert (world.remote / "1" / "MD5SUMS").read_text().count("\n") == 3
    result = world.sync()
    assert result.ok and result.downloaded == [1]
    assert result.bytes_downloaded == sum(len(v) for v in FILES.values())
    assert (world.base / "1" / "variables" / "variables.index").read_bytes() == b"index"
    assert not (world.base / "1" / "MD5SUMS").exists()  # the manifest stays remote
    state = json.loads((world.base / ".tfgate-sync" / "state.json").read_text())
    assert set(state["versions"]) == {"1"}
    assert world.partials() == []


def test_unchanged_manifest_skips(world: World) -> None:
    world.publish(1)
    world.sync()
    inode = (world.base / "1").stat().st_ino
    result = world.sync()
    assert result.ok and result.downloaded == [] and result.unchanged == [1]
    assert result.bytes_downloaded == 0
    assert (world.base / "1").stat().st_ino == inode


def test_changed_manifest_replaces_and_keeps_a_bounded_backup(tmp_path: pathlib.Path) -> None:
    world = World(tmp_path, backups_to_keep=2)
    world.publish(1)
    world.sync()
    for n in range(2, 5):
        world.publish(1, {**FILES, "saved_model.pb": f"graph-v{n}".encode()})
        result = world.sync()
        assert result.ok and result.downloaded == [1]
        assert (world.base / "1" / "saved_model.pb").read_bytes() == f"graph-v{n}".encode()
    backups = world.backups()
    assert len(backups) == 2 and all(b.startswith("1.") for b in backups)
    kept = sorted((world.base / ".backup" / b / "saved_model.pb").read_bytes() for b in backups)
    assert kept == [b"graph-v2", b"graph-v3"]  # the newest two previous copies


def test_republish_removes_stale_remote_files(world: World) -> None:
    world.publish(1, {**FILES, "extra.txt": b"old"})
    world.publish(1)
    assert not (world.remote / "1" / "extra.txt").exists()
    assert world.sync().ok


def test_corrupted_byte_is_rejected_and_serving_copy_kept(world: World) -> None:
    world.publish(1)
    world.sync()
    world.publish(1, {**FILES, "saved_model.pb": b"graph-v2"})
    (world.remote / "1" / "saved_model.pb").write_bytes(b"graph-v3")  # one byte flipped
    result = world.sync()
    assert not result.ok
    (failure,) = result.failures
    assert (failure.version, failure.reason) == (1, "md5_mismatch")
    assert "saved_model.pb" in failure.message
    assert (world.base / "1" / "saved_model.pb").read_bytes() == b"graph-v1"
    assert world.partials() == [] and world.backups() == []


def test_corrupt_new_version_never_gets_a_numeric_name(world: World) -> None:
    world.publish(2)
    (world.remote / "2" / "variables" / "variables.index").write_bytes(b"indeX")
    result = world.sync()
    assert [f.reason for f in result.failures] == ["md5_mismatch"]
    assert world.numeric_dirs() == [] and world.partials() == []


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda v: (v / "not-listed.bin").write_bytes(b"x"), "not listed ['not-listed.bin']"),
        (lambda v: (v / "saved_model.pb").unlink(), "missing ['saved_model.pb']"),
    ],
)
def test_extra_or_missing_files_are_rejected(world: World, tamper, expected: str) -> None:  # type: ignore[no-untyped-def]
    world.publish(1)
    tamper(world.remote / "1")
    result = world.sync()
    (failure,) = result.failures
    assert failure.reason == "manifest_mismatch" and expected in failure.message
    assert world.numeric_dirs() == []


def test_version_without_manifest_is_skipped(world: World, caplog) -> None:  # type: ignore[no-untyped-def]
    world.publish(1)
    write_tree(world.remote / "2", FILES)  # still uploading: no MD5SUMS yet
    result = world.sync()
    assert result.ok and result.downloaded == [1] and result.no_manifest == [2]
    assert world.numeric_dirs() == ["1"]
    assert "version 2 at" in caplog.text and "has no MD5SUMS" in caplog.text


def test_bad_manifest_is_a_failure(world: World) -> None:
    world.publish(1)
    (world.remote / "1" / "MD5SUMS").write_text("not a manifest\n")
    (failure,) = world.sync().failures
    assert failure.reason == "bad_manifest"


@pytest.mark.parametrize("mirror", [False, True])
def test_remote_deletions_mirrored_only_when_asked(tmp_path: pathlib.Path, mirror: bool) -> None:
    world = World(tmp_path, mirror_deletes=mirror)
    world.publish(1)
    world.publish(2)
    world.sync()
    for path in sorted((world.remote / "1").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (world.remote / "1").rmdir()
    result = world.sync()
    assert result.ok
    assert world.numeric_dirs() == (["2"] if mirror else ["1", "2"])
    assert result.deleted == ([1] if mirror else [])
    assert len(world.backups()) == (1 if mirror else 0)


def test_matching_local_copy_is_adopted_without_download(world: World) -> None:
    world.publish(1)
    write_tree(world.base / "1", FILES)  # e.g. state lost, or copied by hand
    inode = (world.base / "1").stat().st_ino
    result = world.sync()
    assert result.ok and result.adopted == [1] and result.bytes_downloaded == 0
    assert (world.base / "1").stat().st_ino == inode


def test_leftover_partial_is_cleaned_by_the_next_pass(world: World) -> None:
    leftover = write_tree(world.base / ".partial" / "7", {"saved_model.pb": b"half"})
    world.publish(1)
    assert world.sync().ok
    assert not leftover.exists() and world.numeric_dirs() == ["1"]


def test_one_sync_per_base_path(world: World) -> None:
    world.publish(1)
    with model_sync.base_path_lock(str(world.base)) as locked:
        assert locked
        result = world.sync()
    assert result.locked_out and result.ok and world.numeric_dirs() == []


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "disk_full"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission"),
    ],
)
def test_local_write_failures_remove_the_partial(
    world: World, monkeypatch: pytest.MonkeyPatch, error: OSError, reason: str
) -> None:
    world.publish(1)
    real = RemoteStore.download

    def failing(self, version, relpath, dest, limiter, cancelled):  # type: ignore[no-untyped-def]
        real(self, version, relpath, dest, limiter, cancelled)  # some bytes are on disk ...
        raise error  # ... when the disk fills up

    monkeypatch.setattr(RemoteStore, "download", failing)
    (failure,) = world.sync().failures
    assert failure.reason == reason
    assert world.partials() == [] and world.numeric_dirs() == []


def test_cancelled_pass_leaves_nothing(world: World) -> None:
    world.publish(1)
    result = sync_once(world.config, cancelled=lambda: True)
    assert result.cancelled and not result.ok
    assert world.numeric_dirs() == [] and world.partials() == []


def test_exchange_dirs_swaps_atomically(tmp_path: pathlib.Path) -> None:
    a = write_tree(tmp_path / "a", {"f": b"A"})
    b = write_tree(tmp_path / "b", {"f": b"B"})
    if not exchange_dirs(str(a), str(b)):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    assert (a / "f").read_bytes() == b"B" and (b / "f").read_bytes() == b"A"


def test_missing_remote_root_is_not_a_failure_but_is_reported(world: World) -> None:
    result = world.sync()  # nothing published: the remote model root does not exist
    assert result.ok and result.remote_missing
    assert result.downloaded == [] and world.numeric_dirs() == []
    world.publish(1)
    result = world.sync()
    assert result.ok and not result.remote_missing
    assert result.downloaded == [1]
