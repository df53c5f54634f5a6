"""Model sync over real HTTP against the WebHDFS test server (tests/webhdfs_server.py):
publish, namenode -> datanode redirects, truncated and reset transfers, slow answers,
endpoint failover, corrupted bytes, the bandwidth limit, and the retry loop + webhook."""

from __future__ import annotations

import asyncio
import http.server
import json
import pathlib
import random
import threading
from collections.abc import Iterator

import pytest

from app.sync.loop import ModelSync
from app.sync.manifest import publish
from app.sync.storage import SourceOptions
from app.sync.sync_pass import SyncConfig, sync_once
from tests.webhdfs_server import WebHdfsCluster, down_endpoint, write_tree

FILES = {
    "saved_model.pb": bytes(range(256)) * 64,  # 16 KiB
    "variables/variables.data-00000-of-00001": b"w" * 40_000,
    "variables/variables.index": b"index",
}


@pytest.fixture
def hdfs(tmp_path: pathlib.Path) -> Iterator[WebHdfsCluster]:
    cluster = WebHdfsCluster(tmp_path / "hdfs", namenodes=2)
    try:
        yield cluster
    finally:
        cluster.close()


def config_for(
    hdfs: WebHdfsCluster, base: pathlib.Path, endpoints: list[str] | None = None, **kw: object
) -> SyncConfig:
    endpoints = endpoints or hdfs.endpoints[:1]
    source = SourceOptions(
        f"webhdfs://{endpoints[0]}/models/m",
        endpoints=tuple(endpoints),
        timeout_seconds=float(kw.pop("timeout_seconds", 5.0)),  # type: ignore[arg-type]
    )
    return SyncConfig("m", str(base), source, **kw)  # type: ignore[arg-type]


def publish_local(hdfs: WebHdfsCluster, tmp: pathlib.Path, version: int, files=FILES) -> None:  # type: ignore[no-untyped-def]
    """Write the version straight into the cluster's root, with its manifest (as publish
    would; the publish path itself is tested over HTTP below)."""
    local = tmp / f"src{version}"
    write_tree(local, files)
    publish(str(local), f"file://{hdfs.local('/models/m')}/{version}", SourceOptions("file:///x"))


def test_publish_over_webhdfs_then_sync(hdfs: WebHdfsCluster, tmp_path: pathlib.Path) -> None:
    write_tree(tmp_path / "src", FILES)
    options = SourceOptions(hdfs.url("/models/m"), timeout_seconds=5)
    publish(str(tmp_path / "src"), hdfs.url("/models/m/1"), options)
    remote = hdfs.local("/models/m/1")
    assert (remote / "variables" / "variables.index").read_bytes() == b"index"
    assert "variables/variables.index" in (remote / "MD5SUMS").read_text()

    config = config_for(hdfs, tmp_path / "base")
    result = sync_once(config)
    assert result.ok and result.downloaded == [1], result.failures
    assert hdfs.faults.opens >= 3  # every file went through the datanode redirect
    for rel, data in FILES.items():
        assert (tmp_path / "base" / "1" / rel).read_bytes() == data
    again = sync_once(config)
    assert again.ok and again.downloaded == [] and again.unchanged == [1]


@pytest.mark.parametrize("fault", ["truncate_times", "reset_times"])
def test_cut_transfer_fails_cleanly_then_retry_succeeds(
    hdfs: WebHdfsCluster, tmp_path: pathlib.Path, fault: str
) -> None:
    publish_local(hdfs, tmp_path, 1)
    base = tmp_path / "base"
    config = config_for(hdfs, base)
    setattr(hdfs.faults, fault, 100)  # every transfer is cut
    result = sync_once(config)
    assert not result.ok
    assert {f.reason for f in result.failures} <= {"connection", "truncated"}, result.failures
    assert not (base / "1").exists()
    assert list((base / ".partial").iterdir()) == []  # the pass got as far as downloading
    setattr(hdfs.faults, fault, 0)
    assert sync_once(config).downloaded == [1]


def test_slow_datanode_times_out(hdfs: WebHdfsCluster, tmp_path: pathlib.Path) -> None:
    publish_local(hdfs, tmp_path, 1)
    config = config_for(hdfs, tmp_path / "base", timeout_seconds=0.5)
    hdfs.faults.slow_seconds = 2.0
    result = sync_once(config)
    assert [f.reason for f in result.failures] == ["timeout"], result.failures
    assert result.seconds < 2.0 * 3  # bounded by the per-call timeout, not hung
    hdfs.faults.slow_seconds = 0.0
    assert sync_once(config).ok


def test_failover_from_a_down_endpoint(
    hdfs: WebHdfsCluster, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish_local(hdfs, tmp_path, 1)
    config = config_for(hdfs, tmp_path / "base", endpoints=[down_endpoint(), hdfs.endpoints[0]])
    rng = random.Random()
    # Find a seed that starts at the dead endpoint, so the failover path is exercised.
    seed = next(s for s in range(100) if random.Random(s).randrange(2) == 0)
    rng.seed(seed)
    result = sync_once(config, rng=rng)
    assert result.ok and result.downloaded == [1], result.failures
    assert result.endpoint == f"webhdfs://{hdfs.endpoints[0]}/models/m"
    assert "failing over to" in caplog.text


def test_failover_mid_transfer_to_another_namenode(
    hdfs: WebHdfsCluster, tmp_path: pathlib.Path
) -> None:
    publish_local(hdfs, tmp_path, 1)
    config = config_for(hdfs, tmp_path / "base", endpoints=hdfs.endpoints)
    hdfs.faults.reset_times = 1  # the first endpoint's transfer is cut, the next one works
    result = sync_once(config, rng=random.Random(1))
    assert result.ok and result.downloaded == [1], result.failures
    assert len(hdfs.faults.namenode_requests) == 2  # both namenodes were used


def test_every_endpoint_down(tmp_path: pathlib.Path) -> None:
    source = SourceOptions(
        f"webhdfs://{down_endpoint()}/models/m", endpoints=(down_endpoint(), down_endpoint())
    )
    result = sync_once(SyncConfig("m", str(tmp_path / "base"), source))
    (failure,) = result.failures
    assert failure.reason == "connection" and failure.version is None


def test_corrupted_byte_from_datanode_is_rejected(
    hdfs: WebHdfsCluster, tmp_path: pathlib.Path
) -> None:
    publish_local(hdfs, tmp_path, 1)
    hdfs.faults.corrupt_paths.add("/models/m/1/variables/variables.index")
    result = sync_once(config_for(hdfs, tmp_path / "base"))
    (failure,) = result.failures
    assert failure.reason == "md5_mismatch" and "variables/variables.index" in failure.message
    assert not (tmp_path / "base" / "1").exists()


def test_bandwidth_limit_is_honoured(hdfs: WebHdfsCluster, tmp_path: pathlib.Path) -> None:
    limit = 256 * 1024
    payload = bytes(random.Random(0).randbytes(768 * 1024))
    publish_local(hdfs, tmp_path, 1, {"saved_model.pb": payload})
    result = sync_once(config_for(hdfs, tmp_path / "base", bandwidth_bytes_per_second=limit))
    assert result.ok, result.failures
    measured = result.bytes_downloaded / result.seconds
    # A functional limit: the average rate stays at or under the limit (the bucket starts
    # empty), and not far under it (the limit is not just a sleep somewhere).
    assert 0.7 * limit <= measured <= 1.05 * limit, (measured, result.seconds)


class Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_loop_retries_with_backoff_and_alerts(
    hdfs: WebHdfsCluster, tmp_path: pathlib.Path
) -> None:
    """Two cut transfers, then success: the loop retries on its own (backoff, not the poll
    interval), status and metrics count it, the webhook hears failed then recovered."""
    from app.ops.metrics import Metrics

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    Hook.received = []
    try:
        publish_local(hdfs, tmp_path, 1)
        config = config_for(
            hdfs,
            tmp_path / "base",
            poll_seconds=60.0,
            retry_initial_seconds=0.1,
            retry_max_seconds=0.5,
            webhook_url=f"http://127.0.0.1:{hook.server_address[1]}/",
        )
        hdfs.faults.truncate_times = 2
        metrics = Metrics()
        syncer = ModelSync([config], metrics)
        syncer.start()
        try:
            for _ in range(100):
                if (tmp_path / "base" / "1").exists():
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)  # let the webhook threads deliver
        finally:
            await syncer.close()
        status = syncer.describe("m")["sync"]
        assert status["last_success"] is not None and status["consecutive_failures"] == 0
        assert status["last_error"]["reason"] in ("connection", "truncated")
        text = metrics.render().decode()
        assert 'tfgate_model_sync_successes{model_name="m"} 1' in text
        assert 'tfgate_model_sync_failures{model_name="m",reason=' in text
        assert "tfgate_model_sync_last_success_timestamp_seconds" in text
        events = [e["event"] for e in Hook.received]
        assert events == ["model_sync_failed", "model_sync_failed", "model_sync_recovered"]
        assert Hook.received[0]["model"] == "m" and Hook.received[0]["failures"]
    finally:
        hook.shutdown()
        hook.server_close()


async def test_webhook_failure_is_only_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = SourceOptions(f"webhdfs://{down_endpoint()}/models/m", timeout_seconds=1)
    config = SyncConfig(
        "m", str(tmp_path / "base"), source, webhook_url=f"http://{down_endpoint()}/hook"
    )
    syncer = ModelSync([config])
    result = await syncer.run_pass("m")
    assert not result.ok
    await asyncio.sleep(1.0)
    assert "webhook" in caplog.text and "failed" in caplog.text
