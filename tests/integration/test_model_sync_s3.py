"""Model sync against a real S3 endpoint (moto server): `tfgate publish` and `tfgate sync`
as a user runs them, new / unchanged / changed / corrupted versions."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import uuid

import pytest

from app.sync.manifest import publish
from app.sync.storage import SourceOptions
from app.sync.sync_pass import SyncConfig, sync_once
from tests.s3_server import S3Endpoint, s3  # noqa: F401 - fixture
from tests.webhdfs_server import write_tree

BIN = pathlib.Path(sys.executable).parent
FILES = {
    "saved_model.pb": b"graph" * 1000,
    "variables/variables.data-00000-of-00001": bytes(range(256)) * 200,
    "variables/variables.index": b"index",
}


@pytest.fixture
def bucket(s3: S3Endpoint) -> str:  # noqa: F811
    name = f"models-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=name)
    return name


def tfgate(s3: S3Endpoint, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    return subprocess.run(
        [str(BIN / "tfgate"), *args], env=s3.env(), capture_output=True, text=True, timeout=120
    )


def sync_config(s3: S3Endpoint, bucket: str, base: pathlib.Path) -> SyncConfig:  # noqa: F811
    source = SourceOptions(
        f"s3://{bucket}/prod/m",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        timeout_seconds=10,
    )
    return SyncConfig("m", str(base), source, backups_to_keep=1)


def test_publish_cli_writes_files_then_manifest(
    s3: S3Endpoint,  # noqa: F811
    bucket: str,
    tmp_path: pathlib.Path,
) -> None:
    write_tree(tmp_path / "v1", FILES)
    done = tfgate(s3, "publish", str(tmp_path / "v1"), f"s3://{bucket}/prod/m/1")
    assert done.returncode == 0, done.stderr
    assert "Published 3 file(s)" in done.stdout
    objects = s3.client().list_objects_v2(Bucket=bucket, Prefix="prod/m/1/")["Contents"]
    assert sorted(o["Key"] for o in objects) == sorted(
        [f"prod/m/1/{rel}" for rel in FILES] + ["prod/m/1/MD5SUMS"]
    )
    by_key = {o["Key"]: o["LastModified"] for o in objects}
    assert by_key["prod/m/1/MD5SUMS"] >= max(by_key.values())  # written last


def test_publish_cli_errors(s3: S3Endpoint, tmp_path: pathlib.Path) -> None:  # noqa: F811
    missing = tfgate(s3, "publish", str(tmp_path / "nope"), "s3://b/m/1")
    assert missing.returncode == 1 and "is not a directory" in missing.stderr
    write_tree(tmp_path / "v", FILES)
    no_version = tfgate(s3, "publish", str(tmp_path / "v"), "s3://b/m/latest")
    assert no_version.returncode == 1 and "must be the version number" in no_version.stderr


def test_sync_new_unchanged_changed_corrupted(
    s3: S3Endpoint,  # noqa: F811
    bucket: str,
    tmp_path: pathlib.Path,
) -> None:
    base = tmp_path / "base"
    config = sync_config(s3, bucket, base)
    write_tree(tmp_path / "v1", FILES)
    publish(str(tmp_path / "v1"), f"s3://{bucket}/prod/m/1", config.source)

    first = sync_once(config)  # new version arrives
    assert first.ok and first.downloaded == [1], first.failures
    assert (base / "1" / "saved_model.pb").read_bytes() == FILES["saved_model.pb"]

    second = sync_once(config)  # unchanged manifest: nothing downloaded
    assert second.ok and second.downloaded == [] and second.bytes_downloaded == 0

    write_tree(tmp_path / "v1b", {**FILES, "saved_model.pb": b"graph-2"})
    publish(str(tmp_path / "v1b"), f"s3://{bucket}/prod/m/1", config.source)
    third = sync_once(config)  # changed manifest: replaced, previous copy backed up
    assert third.ok and third.downloaded == [1]
    assert (base / "1" / "saved_model.pb").read_bytes() == b"graph-2"
    (backup,) = (base / ".backup").iterdir()
    assert (backup / "saved_model.pb").read_bytes() == FILES["saved_model.pb"]

    write_tree(tmp_path / "v1c", {**FILES, "saved_model.pb": b"graph-3"})
    publish(str(tmp_path / "v1c"), f"s3://{bucket}/prod/m/1", config.source)
    s3.client().put_object(  # then one corrupted byte in the store under the new manifest
        Bucket=bucket, Key="prod/m/1/variables/variables.index", Body=b"indeX"
    )
    fourth = sync_once(config)
    assert [f.reason for f in fourth.failures] == ["md5_mismatch"]
    assert (base / "1" / "saved_model.pb").read_bytes() == b"graph-2"  # untouched
    assert list((base / ".partial").iterdir()) == []


@pytest.mark.slow
def test_sync_cli_once(s3: S3Endpoint, bucket: str, tmp_path: pathlib.Path) -> None:  # noqa: F811
    base = tmp_path / "models" / "m"
    config_file = tmp_path / "tfgate.toml"
    config_file.write_text(
        f'[server]\nmodel_name = "m"\nmodel_base_path = "{base}"\n\n'
        f'[models.m.sync]\nsource = "s3://{bucket}/prod/m"\n'
        f'endpoint_url = "{s3.endpoint_url}"\n'
    )
    write_tree(tmp_path / "v3", FILES)
    assert tfgate(s3, "publish", str(tmp_path / "v3"), f"s3://{bucket}/prod/m/3").returncode == 0
    done = tfgate(s3, "sync", "--once", f"--config={config_file}")
    assert done.returncode == 0, done.stderr
    assert "m: ok" in done.stdout and "downloaded [3]" in done.stdout
    assert (base / "3" / "variables" / "variables.index").read_bytes() == b"index"

    assert tfgate(s3, "publish", str(tmp_path / "v3"), f"s3://{bucket}/prod/m/4").returncode == 0
    s3.client().put_object(Bucket=bucket, Key="prod/m/4/saved_model.pb", Body=b"tampered")
    failed = tfgate(s3, "sync", "--once", f"--config={config_file}")
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout and "version 4: md5_mismatch" in failed.stdout
    assert sorted(p.name for p in base.iterdir() if p.name.isdigit()) == ["3"]


def test_sync_cli_rejects_bad_config(s3: S3Endpoint, tmp_path: pathlib.Path) -> None:  # noqa: F811
    config_file = tmp_path / "tfgate.toml"
    config_file.write_text(
        '[server]\nmodel_name = "m"\nmodel_base_path = "/tmp/x"\n\n'
        '[models.m.sync]\nsource = "s3://b/m"\npoll_seconds = -1\n'
    )
    done = tfgate(s3, "sync", "--once", f"--config={config_file}")
    assert done.returncode == 1
    assert "[models.m.sync]: poll_seconds must be > 0" in done.stderr
