"""Remote model stores (S3, WebHDFS, HDFS, local files) behind one small interface.

Lifecycle position: model_sync -> storage.RemoteStore (list versions, read a manifest, list
a version's files, download one file under a bandwidth limit) -> the remote store. `tfgate
publish` writes through the same class. Every call blocks: model_sync runs them off the
event loop. The protocols themselves are fsspec's (s3fs, its WebHDFS client, pyarrow's
HadoopFileSystem); this module only adds timeouts, endpoint failover order, rate limiting
and one error vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import importlib.util
import logging
import os
import posixpath
import random
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

log = logging.getLogger("tfgate.storage")

SCHEMES = ("s3", "webhdfs", "hdfs", "file")
MANIFEST_NAME = "MD5SUMS"
MAX_CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 16 << 10

# Errors worth retrying on another endpoint: the data may be fine, the path to it was not.
FAILOVER_REASONS = frozenset({"timeout", "connection", "truncated", "server_error"})

# Exception class names (from requests, urllib3, aiohttp, botocore) that mean the
# connection failed or broke mid-transfer. Matched by name so this module does not import
# every optional backend just to classify its errors.
_CONNECTION_ERROR_NAMES = frozenset(
    {
        "ConnectionError",
        "ChunkedEncodingError",
        "IncompleteRead",
        "ProtocolError",
        "ClientPayloadError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "HTTPClientError",
        "RemoteDisconnected",
    }
)


class StorageError(Exception):
    """A remote or local storage operation failed; `reason` is one word for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def failover(self) -> bool:
        return self.reason in FAILOVER_REASONS


class Cancelled(Exception):
    """The sync was asked to stop (server shutdown) in the middle of a transfer."""


def classify(exc: BaseException) -> str:
    """One reason word for an exception: timeout, connection, permission, disk_full, ..."""
    if isinstance(exc, StorageError):
        return exc.reason
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, TimeoutError) or any("Timeout" in n for n in names):
        return "timeout"
    if isinstance(exc, PermissionError):
        return "permission"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    if isinstance(exc, ConnectionError) or names & _CONNECTION_ERROR_NAMES:
        return "connection"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 500:
        return "server_error"
    return "other"


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Re-raise anything but StorageError as one, with `what` saying which call failed."""
    try:
        yield
    except (StorageError, Cancelled):
        raise
    except Exception as exc:
        detail = str(exc) or type(exc).__name__
        raise StorageError(classify(exc), f"{what}: {detail}") from exc


# --- source configuration ---


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """Where one model's versions live remotely, and how to reach them."""

    url: str  # the model's root: scheme://.../MODEL (its children are version directories)
    timeout_seconds: float = 30.0
    endpoints: tuple[str, ...] = ()  # webhdfs: host:port alternatives to the URL's own
    endpoint_url: str = ""  # s3: S3-compatible store (MinIO, ...)
    region_name: str = ""
    aws_access_key_id: str = ""  # empty: the usual AWS env vars / config files
    aws_secret_access_key: str = ""
    user: str = ""  # webhdfs / hdfs user name

    @property
    def scheme(self) -> str:
        return urllib.parse.urlsplit(self.url).scheme

    def display_url(self) -> str:
        """The URL without user info, for logs and the admin listing."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def libhdfs_available() -> bool:
    """Whether pyarrow can load libhdfs (it looks in these places, in this order)."""
    if importlib.util.find_spec("pyarrow") is None:
        return False
    candidates = [os.environ.get("ARROW_LIBHDFS_DIR", "")]
    if os.environ.get("HADOOP_HOME"):
        candidates.append(os.path.join(os.environ["HADOOP_HOME"], "lib", "native"))
    for directory in filter(None, candidates):
        if os.path.exists(os.path.join(directory, "libhdfs.so")):
            return True
    import ctypes.util

    return ctypes.util.find_library("hdfs") is not None


def check_source(options: SourceOptions) -> None:
    """Raise ValueError with a message a user can act on; no network I/O."""
    parts = urllib.parse.urlsplit(options.url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"source {options.url!r}: unsupported scheme {parts.scheme!r} "
            f"(expected one of {', '.join(s + '://' for s in SCHEMES)})"
        )
    if not parts.path.strip("/") and parts.scheme != "s3":
        raise ValueError(f"source {options.url!r}: needs a path to the model's directory")
    if parts.scheme == "s3" and (not parts.netloc or not parts.path.strip("/")):
        raise ValueError(f"source {options.url!r}: expected s3://BUCKET/PREFIX/MODEL")
    if parts.scheme == "webhdfs" and not (parts.netloc or options.endpoints):
        raise ValueError(f"source {options.url!r}: needs webhdfs://HOST:PORT/... or endpoints")
    for endpoint in options.endpoints:
        _host_port(endpoint)
    if options.timeout_seconds <= 0:
        raise ValueError("timeout_seconds must be > 0")
    if parts.scheme == "hdfs" and not libhdfs_available():
        raise ValueError(
            f"source {options.url!r}: hdfs:// needs pyarrow with libhdfs (pip install pyarrow; "
            "set HADOOP_HOME or ARROW_LIBHDFS_DIR, plus JAVA_HOME and CLASSPATH). Without "
            "them, use webhdfs://NAMENODE:9870/... (WebHDFS or HttpFS) instead."
        )


def _host_port(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"endpoint {endpoint!r}: expected HOST:PORT")
    return host, int(port)


# --- filesystems ---


def _s3_filesystem(options: SourceOptions) -> Any:
    client_kwargs: dict[str, Any] = {}
    if options.region_name:
        client_kwargs["region_name"] = options.region_name
    fs = fsspec.filesystem(
        "s3",
        endpoint_url=options.endpoint_url or None,
        key=options.aws_access_key_id or None,
        secret=options.aws_secret_access_key or None,
        client_kwargs=client_kwargs,
        config_kwargs={
            "connect_timeout": options.timeout_seconds,
            "read_timeout": options.timeout_seconds,
            "retries": {"max_attempts": 1},  # model_sync retries with backoff itself
        },
        use_listings_cache=False,  # each pass must see the remote as it is now
        skip_instance_cache=True,
    )
    fs.retries = 2  # s3fs's own retry of a dropped read, before ours
    return fs


def _timeout_session(timeout_seconds: float, like: Any) -> Any:
    """A requests.Session that applies a timeout to every call, as fsspec's WebHDFS
    client passes none (a hung namenode or datanode would block a sync forever)."""
    import requests

    class TimeoutSession(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs.setdefault("timeout", timeout_seconds)
            return super().request(*args, **kwargs)

    session = TimeoutSession()
    session.auth, session.verify, session.cert = like.auth, like.verify, like.cert
    return session


def _webhdfs_filesystem(options: SourceOptions, endpoint: str) -> Any:
    host, port = _host_port(endpoint)
    fs = fsspec.filesystem(
        "webhdfs", host=host, port=port, user=options.user or None, skip_instance_cache=True
    )
    fs.session = _timeout_session(options.timeout_seconds, fs.session)
    return fs


def _filesystem_factory(options: SourceOptions, endpoint: str) -> Callable[[], Any]:
    scheme = options.scheme
    if scheme == "s3":
        return lambda: _s3_filesystem(options)
    if scheme == "webhdfs":
        return lambda: _webhdfs_filesystem(options, endpoint)
    if scheme == "hdfs":
        parts = urllib.parse.urlsplit(options.url)
        return lambda: fsspec.filesystem(
            "hdfs",
            host=parts.hostname or "default",
            port=parts.port or 0,
            user=options.user or None,
            skip_instance_cache=True,
        )
    return lambda: fsspec.filesystem("file", skip_instance_cache=True)


def _root_path(options: SourceOptions) -> str:
    parts = urllib.parse.urlsplit(options.url)
    if options.scheme == "s3":
        return f"{parts.netloc}/{parts.path.strip('/')}"
    return "/" + parts.path.strip("/")


def open_stores(options: SourceOptions, rng: random.Random | None = None) -> list[RemoteStore]:
    """The stores to try for one sync pass, in order: for WebHDFS one per endpoint, starting
    at a random one and failing over to the next; otherwise just one."""
    root = _root_path(options)
    if options.scheme != "webhdfs":
        return [RemoteStore(options.display_url(), _filesystem_factory(options, ""), root)]
    endpoints = list(options.endpoints) or [urllib.parse.urlsplit(options.url).netloc]
    start = (rng or random).randrange(len(endpoints))
    ordered = endpoints[start:] + endpoints[:start]
    return [
        RemoteStore(f"webhdfs://{ep}{root}", _filesystem_factory(options, ep), root)
        for ep in ordered
    ]


# --- rate limiting ---


class TokenBucket:
    """Bandwidth limit: `rate` bytes/s on average, bursts up to `burst_bytes`. The bucket
    starts empty so a short transfer cannot exceed the limit either. One thread only."""

    def __init__(
        self,
        rate: float,
        burst_bytes: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.burst_bytes = burst_bytes
        self.tokens = 0.0
        self._clock = clock
        self._sleep = sleep
        self._last = clock()

    def reserve(self, nbytes: int) -> float:
        """Take `nbytes` (going into debt if needed); returns the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self.tokens = min(self.burst_bytes, self.tokens + (now - self._last) * self.rate)
        self._last = now
        self.tokens -= nbytes
        return max(0.0, -self.tokens / self.rate)

    def throttle(self, nbytes: int, cancelled: Callable[[], bool] = lambda: False) -> None:
        wait = self.reserve(nbytes)
        while wait > 0 and not cancelled():
            step = min(wait, 0.2)  # stay responsive to cancellation
            self._sleep(step)
            wait -= step


def chunk_bytes_for(rate: float) -> int:
    """Read size: small enough that a limited transfer is smooth, large when unlimited."""
    if rate <= 0:
        return MAX_CHUNK_BYTES
    return int(min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, rate / 4)))


def new_limiter(rate: float) -> TokenBucket:
    return TokenBucket(rate, burst_bytes=chunk_bytes_for(rate))


# --- the store ---


class RemoteStore:
    """One model root (`.../MODEL`) on one endpoint. Blocking; one thread at a time.

    Every method raises StorageError (reason + message) on failure."""

    def __init__(self, url: str, make_fs: Callable[[], Any], root: str) -> None:
        self.url = url
        self._make_fs = make_fs
        self._fs: Any = None
        self.root = root

    @property
    def fs(self) -> Any:
        if self._fs is None:
            with storage_errors(f"connecting to {self.url}"):
                self._fs = self._make_fs()
        return self._fs

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def list_versions(self) -> list[int] | None:
        """Numeric child directories of the model root; None when the root (bucket or
        prefix) does not exist."""
        with storage_errors(f"listing {self.url}"):
            try:
                entries = self.fs.ls(self.root, detail=True)
            except FileNotFoundError:
                return None
        versions = []
        for entry in entries:
            name = posixpath.basename(entry["name"].rstrip("/"))
            if entry.get("type") != "directory" or not (name.isascii() and name.isdigit()):
                continue
            if str(int(name)) != name:  # the local copy is named str(version)
                log.warning("%s/%s: skipped; name versions without leading zeros", self.url, name)
                continue
            versions.append(int(name))
        return sorted(versions)

    def read_manifest(self, version: int) -> bytes | None:
        """The version's MD5SUMS, or None when it has none (yet)."""
        with storage_errors(f"reading {self.url}/{version}/{MANIFEST_NAME}"):
            try:
                return bytes(self.fs.cat_file(self._path(str(version), MANIFEST_NAME)))
            except FileNotFoundError:
                return None

    def list_files(self, version: int) -> set[str]:
        """Every file under the version directory, relative to it (manifest included)."""
        top = self.fs._strip_protocol(self._path(str(version)))
        with storage_errors(f"listing {self.url}/{version}"):
            found = self.fs.find(top)
        return {posixpath.relpath(path, top) for path in found}

    def download(
        self,
        version: int,
        relpath: str,
        dest: str,
        limiter: TokenBucket,
        cancelled: Callable[[], bool],
    ) -> tuple[str, int]:
        """Stream one file to `dest` under the limiter; returns (md5 hex, bytes). The file is
        flushed and fsynced; a short read (body cut off early) raises reason 'truncated'."""
        remote = self._path(str(version), relpath)
        chunk = chunk_bytes_for(limiter.rate)
        digest, written = hashlib.md5(), 0
        with storage_errors(f"downloading {self.url}/{version}/{relpath}"):
            with self.fs.open(remote, "rb", block_size=chunk, cache_type="none") as src:
                expected = getattr(src, "size", None)
                with open(dest, "wb") as out:
                    while data := src.read(chunk):
                        if cancelled():
                            raise Cancelled(f"cancelled while downloading {relpath}")
                        digest.update(data)
                        out.write(data)
                        written += len(data)
                        limiter.throttle(len(data), cancelled)
                    out.flush()
                    os.fsync(out.fileno())
            if isinstance(expected, int) and written != expected:
                raise StorageError("truncated", f"got {written} of {expected} bytes of {relpath}")
        return digest.hexdigest(), written

    # --- publishing ---

    def _ensure_parent(self, path: str) -> None:
        """Object stores have no directories; file systems need the parents to exist."""
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        if "s3" not in protocols:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)

    def upload(self, local_path: str, version: int, relpath: str) -> None:
        remote = self._path(str(version), relpath)
        with storage_errors(f"uploading {relpath} to {self.url}/{version}"):
            self._ensure_parent(remote)
            self.fs.put_file(local_path, remote)

    def write_bytes(self, version: int, relpath: str, data: bytes) -> None:
        remote = self._path(str(version), relpath)
        with storage_errors(f"writing {self.url}/{version}/{relpath}"):
            self._ensure_parent(remote)
            self.fs.pipe_file(remote, data)

    def delete(self, version: int, relpath: str) -> None:
        what = f"deleting {self.url}/{version}/{relpath}"
        with storage_errors(what), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(str(version), relpath))
