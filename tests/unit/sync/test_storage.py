"""app/sync/storage.py's pure parts: token bucket, error classification, source checks, endpoint
order. (Transfers against real stores are in tests/integration/test_model_sync_*.py.)"""

from __future__ import annotations

import errno
import random

import pytest

from app.sync import storage
from app.sync.storage import SourceOptions, StorageError, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


# (rate, burst, [(advance seconds, take bytes, expected wait)])
BUCKET_CASES = [
    # starts empty: the very first bytes already wait
    (100.0, 50.0, [(0.0, 100, 1.0)]),
    # debt is repaid before new tokens count
    (100.0, 50.0, [(0.0, 100, 1.0), (0.0, 50, 1.5)]),
    # time refills the bucket, but only up to the burst size
    (100.0, 50.0, [(10.0, 50, 0.0), (0.0, 50, 0.5)]),
    (100.0, 50.0, [(0.25, 25, 0.0), (0.0, 25, 0.25)]),
    # unlimited
    (0.0, 0.0, [(0.0, 10**9, 0.0)]),
]


@pytest.mark.parametrize(("rate", "burst", "steps"), BUCKET_CASES)
def test_token_bucket_reserve(rate: float, burst: float, steps: list) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock=clock)
    for advance, take, expected in steps:
        clock.now += advance
        assert bucket.reserve(take) == pytest.approx(expected)


def test_token_bucket_average_rate_over_many_chunks() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000.0, 100.0, clock=clock, sleep=clock.sleep)
    for _ in range(50):
        bucket.throttle(100)
    assert 5000 / clock.now == pytest.approx(1000.0, rel=0.01)


def test_token_bucket_throttle_stops_when_cancelled() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 10.0, clock=clock, sleep=clock.sleep)
    bucket.throttle(1000, cancelled=lambda: clock.slept > 0.5)
    assert clock.slept < 1.0


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (0, storage.MAX_CHUNK_BYTES),
        (10, storage.MIN_CHUNK_BYTES),
        (400_000, 100_000),
        (10**9, storage.MAX_CHUNK_BYTES),
    ],
)
def test_chunk_bytes_for(rate: float, expected: int) -> None:
    assert storage.chunk_bytes_for(rate) == expected


class ReadTimeoutError(Exception):  # botocore's name
    pass


class ChunkedEncodingError(OSError):  # requests' name
    pass


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = type("R", (), {"status_code": status})()


@pytest.mark.parametrize(
    ("exc", "reason", "failover"),
    [
        (TimeoutError(), "timeout", True),
        (ReadTimeoutError(), "timeout", True),
        (ConnectionResetError(), "connection", True),
        (ChunkedEncodingError("cut"), "connection", True),
        (HTTPError(503), "server_error", True),
        (HTTPError(404), "other", False),
        (PermissionError(errno.EACCES, "denied"), "permission", False),
        (OSError(errno.ENOSPC, "No space left on device"), "disk_full", False),
        (FileNotFoundError(), "not_found", False),
        (StorageError("md5_mismatch", "x"), "md5_mismatch", False),
        (ValueError("?"), "other", False),
    ],
)
def test_classify(exc: BaseException, reason: str, failover: bool) -> None:
    assert storage.classify(exc) == reason
    with pytest.raises(StorageError) as info, storage.storage_errors("doing it"):
        raise exc
    assert info.value.reason == reason
    assert info.value.failover is failover


def test_storage_errors_lets_cancellation_through() -> None:
    with pytest.raises(storage.Cancelled), storage.storage_errors("x"):
        raise storage.Cancelled("stop")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SourceOptions("ftp://host/m"), "unsupported scheme 'ftp'"),
        (SourceOptions("s3://bucket"), "expected s3://BUCKET/PREFIX/MODEL"),
        (SourceOptions("webhdfs:///models/m"), "needs webhdfs://HOST:PORT"),
        (SourceOptions("webhdfs://nn:9870/m", endpoints=("nn2",)), "expected HOST:PORT"),
        (SourceOptions("file:///"), "needs a path"),
        (SourceOptions("s3://b/m", timeout_seconds=0), "timeout_seconds must be > 0"),
    ],
)
def test_check_source_rejects(options: SourceOptions, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        storage.check_source(options)


def test_hdfs_without_libhdfs_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "libhdfs_available", lambda: False)
    with pytest.raises(ValueError, match=r"hdfs:// needs pyarrow with libhdfs.*webhdfs://"):
        storage.check_source(SourceOptions("hdfs://namenode:8020/models/m"))


@pytest.mark.parametrize(
    "url",
    ["s3://bucket/prefix/m", "webhdfs://nn:9870/models/m", "file:///srv/models/m"],
)
def test_check_source_accepts(url: str) -> None:
    storage.check_source(SourceOptions(url))


def test_display_url_drops_user_info() -> None:
    options = SourceOptions("webhdfs://alice:secret@nn:9870/models/m")
    assert options.display_url() == "webhdfs://nn:9870/models/m"


def test_webhdfs_stores_rotate_from_a_random_endpoint() -> None:
    options = SourceOptions("webhdfs://a:1/models/m", endpoints=("a:1", "b:2", "c:3"))
    starts = set()
    for seed in range(20):
        urls = [s.url for s in storage.open_stores(options, random.Random(seed))]
        assert sorted(urls) == [f"webhdfs://{e}/models/m" for e in ("a:1", "b:2", "c:3")]
        first = urls[0].split("/")[2]
        order = ["a:1", "b:2", "c:3"]
        i = order.index(first)
        assert [u.split("/")[2] for u in urls] == order[i:] + order[:i]
        starts.add(first)
    assert starts == {"a:1", "b:2", "c:3"}


def test_one_store_for_other_schemes() -> None:
    stores = storage.open_stores(SourceOptions("s3://bucket/prefix/m"))
    assert [s.url for s in stores] == ["s3://bucket/prefix/m"]
    assert stores[0].root == "bucket/prefix/m"
