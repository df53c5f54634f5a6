"""Model sync: pulls versions from a remote store into a model's base path, verified by md5.

Lifecycle position: remote (sync/storage.py) -> base_path/.partial/<v> -> md5 verified ->
atomic rename to base_path/<v> -> lifecycle/discovery.py notices it and tells the registry. Sync
only writes directories (DESIGN rule 1): nothing half-written ever has a numeric name, and discovery
ignores `.partial`, `.backup` and `.tfgate-sync`. One pass is `sync_once()` (blocking, run off the
event loop); the loop, status and metrics are in sync/loop.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from app.lifecycle.discovery import list_versions
from app.lifecycle.state_file import write_json_atomically
from app.sync.manifest import (
    ManifestError,
    check_file_set,
    local_files,
    manifest_digest,
    md5_file,
    parse_manifest,
)
from app.sync.storage import (
    MANIFEST_NAME,
    Cancelled,
    RemoteStore,
    SourceOptions,
    StorageError,
    TokenBucket,
    classify,
    new_limiter,
    open_stores,
    storage_errors,
)

log = logging.getLogger("tfgate.model_sync")

PARTIAL_DIR = ".partial"
BACKUP_DIR = ".backup"
STATE_DIR = ".tfgate-sync"


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """`[models.NAME.sync]` of the tfgate TOML config, validated (see model_sync_config)."""

    model: str
    base_path: str
    source: SourceOptions
    poll_seconds: float = 30.0
    bandwidth_bytes_per_second: float = 0.0  # 0: unlimited
    mirror_deletes: bool = False
    backups_to_keep: int = 2
    webhook_url: str = ""
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 0.0  # 0: poll_seconds


# --- local state: which manifest each synced version was made from ---


class SyncState:
    """base_path/.tfgate-sync/state.json: {version: manifest sha256 + when}. Written
    atomically; a state recorded for another source URL is ignored."""

    def __init__(self, base_path: str, source: str) -> None:
        self.path = os.path.join(base_path, STATE_DIR, "state.json")
        self.source = source
        self.versions: dict[int, dict[str, Any]] = {}

    @classmethod
    def load(cls, base_path: str, source: str) -> SyncState:
        state = cls(base_path, source)
        try:
            with open(state.path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("source") == source:
                state.versions = {int(v): dict(e) for v, e in data.get("versions", {}).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("Ignoring unreadable sync state %s: %s", state.path, exc)
        return state

    def digests(self) -> dict[int, str]:
        return {v: str(e.get("manifest_sha256", "")) for v, e in self.versions.items()}

    def record(self, version: int, digest: str) -> None:
        self.versions[version] = {"manifest_sha256": digest, "synced_at": time.time()}
        self.save()

    def forget(self, version: int) -> None:
        if self.versions.pop(version, None) is not None:
            self.save()

    def save(self) -> None:
        versions = {str(v): e for v, e in sorted(self.versions.items())}
        write_json_atomically(
            self.path, {"source": self.source, "versions": versions}, temp_prefix=".state."
        )


# --- deciding what to do ---


@dataclasses.dataclass(frozen=True)
class SyncPlan:
    fetch: tuple[int, ...]  # newest first: the version most likely to serve arrives first
    adopt: frozenset[int]  # on disk but not recorded: verify the local copy before fetching
    unchanged: tuple[int, ...]
    no_manifest: tuple[int, ...]
    delete: tuple[int, ...]


def plan_sync(
    remote: Mapping[int, str | None],
    recorded: Mapping[int, str],
    local: set[int],
    mirror_deletes: bool,
) -> SyncPlan:
    """Pure. remote: version -> manifest digest (None: no manifest); recorded: what the
    local copies were synced from; local: numeric dirs on disk."""
    with_manifest = {v: d for v, d in remote.items() if d is not None}
    fetch = sorted(
        (v for v, d in with_manifest.items() if v not in local or recorded.get(v) != d),
        reverse=True,
    )
    adopt = frozenset(v for v in fetch if v in local and v not in recorded)
    unchanged = sorted(v for v in with_manifest if v not in fetch)
    delete: list[int] = []
    # An empty listing is more likely a wrong prefix or a broken store than a deliberate
    # removal of every version: never mirror it.
    if mirror_deletes and remote:
        delete = sorted(v for v in recorded if v not in remote and v in local)
    return SyncPlan(
        tuple(fetch),
        adopt,
        tuple(unchanged),
        tuple(sorted(v for v, d in remote.items() if d is None)),
        tuple(delete),
    )


# --- installing a verified version ---

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_dirs(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False when the kernel
    or file system cannot, so the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def install_version(partial: str, target: str, backup_root: str, keep: int) -> str | None:
    """Rename `partial` to `target`; a previous `target` goes to the backup area (its path
    is returned). With an atomic exchange the version directory never disappears, so
    discovery cannot see the version vanish and unload it mid-swap."""
    if not os.path.exists(target):
        os.rename(partial, target)
        _fsync_dir(os.path.dirname(target))
        return None
    os.makedirs(backup_root, exist_ok=True)
    backup = os.path.join(backup_root, f"{os.path.basename(target)}.{time.time_ns()}")
    if exchange_dirs(partial, target):
        os.rename(partial, backup)  # `partial` now holds the previous copy
    else:
        os.rename(target, backup)
        os.rename(partial, target)
    _fsync_dir(os.path.dirname(target))
    prune_backups(backup_root, keep)
    return backup


def retire_version(target: str, backup_root: str, keep: int) -> None:
    """Mirror a remote deletion: the version leaves base_path through the backup area."""
    os.makedirs(backup_root, exist_ok=True)
    os.rename(target, os.path.join(backup_root, f"{os.path.basename(target)}.{time.time_ns()}"))
    prune_backups(backup_root, keep)


def prune_backups(backup_root: str, keep: int) -> None:
    """Keep the `keep` newest backups (any version); names are <version>.<time_ns>."""

    def stamp(name: str) -> int:
        suffix = name.rpartition(".")[2]
        return int(suffix) if suffix.isascii() and suffix.isdigit() else 0

    names = sorted(os.listdir(backup_root), key=stamp, reverse=True)
    for name in names[max(keep, 0) :]:
        shutil.rmtree(os.path.join(backup_root, name), ignore_errors=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def base_path_lock(base_path: str) -> Iterator[bool]:
    """One sync at a time per base path (server loop vs `tfgate sync`); yields False when
    another process holds it."""
    directory = os.path.join(base_path, STATE_DIR)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "lock"), "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def clean_partial(base_path: str) -> None:
    """Remove what an interrupted pass (crash, kill, power loss) left half-written."""
    partial = os.path.join(base_path, PARTIAL_DIR)
    if os.path.isdir(partial):
        for name in os.listdir(partial):
            log.info("Removing leftover partial download %s", os.path.join(partial, name))
            shutil.rmtree(os.path.join(partial, name), ignore_errors=True)


# --- one pass ---


@dataclasses.dataclass
class VersionFailure:
    version: int | None  # None: the pass as a whole (listing, connection)
    reason: str
    message: str


@dataclasses.dataclass
class PassResult:
    model: str
    source: str
    endpoint: str = ""
    downloaded: list[int] = dataclasses.field(default_factory=list)
    adopted: list[int] = dataclasses.field(default_factory=list)
    unchanged: list[int] = dataclasses.field(default_factory=list)
    no_manifest: list[int] = dataclasses.field(default_factory=list)
    deleted: list[int] = dataclasses.field(default_factory=list)
    bytes_downloaded: int = 0
    failures: list[VersionFailure] = dataclasses.field(default_factory=list)
    locked_out: bool = False  # another process was syncing this base path
    remote_missing: bool = False  # the bucket or prefix does not exist (nothing published)
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.cancelled


def sync_once(
    config: SyncConfig,
    cancelled: Callable[[], bool] = lambda: False,
    rng: random.Random | None = None,
) -> PassResult:
    """One pass for one model: list, compare manifests, fetch what changed, verify,
    install, mirror deletions if asked. Never raises for remote or disk trouble: failures
    are in the result (and logged at ERROR)."""
    started = time.monotonic()
    result = PassResult(config.model, config.source.display_url())
    try:
        os.makedirs(config.base_path, exist_ok=True)
        with base_path_lock(config.base_path) as locked:
            if not locked:
                result.locked_out = True
                log.info("Model %s: another process is syncing %s", config.model, config.base_path)
            else:
                clean_partial(config.base_path)
                _pass_over_endpoints(config, result, cancelled, rng)
    except Cancelled:
        result.cancelled = True
    except OSError as exc:  # the base path itself: permissions, disk
        result.failures.append(VersionFailure(None, classify(exc), f"{config.base_path}: {exc}"))
    except StorageError as exc:
        result.failures.append(VersionFailure(None, exc.reason, exc.message))
    for failure in result.failures:
        which = f"version {failure.version}" if failure.version is not None else "sync"
        log.error(
            "Model %s: %s from %s failed (%s): %s",
            config.model,
            which,
            result.endpoint or result.source,
            failure.reason,
            failure.message,
        )
    result.seconds = time.monotonic() - started
    return result


def _pass_over_endpoints(
    config: SyncConfig,
    result: PassResult,
    cancelled: Callable[[], bool],
    rng: random.Random | None,
) -> None:
    stores = open_stores(config.source, rng)
    for index, store in enumerate(stores):
        result.endpoint = store.url
        last = index == len(stores) - 1
        try:
            _pass_with_store(config, store, result, cancelled, can_failover=not last)
            return
        except StorageError as exc:
            if last:
                raise
            log.warning(
                "Model %s: %s failed (%s: %s); failing over to %s",
                config.model,
                store.url,
                exc.reason,
                exc.message,
                stores[index + 1].url,
            )
            result.failures.clear()  # the next endpoint tries every version again


def _pass_with_store(
    config: SyncConfig,
    store: RemoteStore,
    result: PassResult,
    cancelled: Callable[[], bool],
    can_failover: bool,
) -> None:
    listed = store.list_versions()
    result.remote_missing = listed is None
    manifests = {v: store.read_manifest(v) for v in listed or []}
    for version in sorted(v for v, m in manifests.items() if m is None):
        log.warning(
            "Model %s: version %d at %s has no %s (yet); skipped",
            config.model,
            version,
            store.url,
            MANIFEST_NAME,
        )
    state = SyncState.load(config.base_path, config.source.url)
    local = set(list_versions(config.base_path) or {})
    digests = {v: manifest_digest(m) if m is not None else None for v, m in manifests.items()}
    plan = plan_sync(digests, state.digests(), local, config.mirror_deletes)
    result.unchanged, result.no_manifest = list(plan.unchanged), list(plan.no_manifest)
    limiter = new_limiter(config.bandwidth_bytes_per_second)
    for version in plan.fetch:
        try:
            _fetch_version(
                config, store, version, manifests[version] or b"", plan, limiter, cancelled, result
            )
            state.record(version, digests[version] or "")
        except StorageError as exc:
            if exc.failover and can_failover:
                raise
            result.failures.append(VersionFailure(version, exc.reason, exc.message))
    backup_root = os.path.join(config.base_path, BACKUP_DIR)
    for version in plan.delete:
        with storage_errors(f"removing version {version}"):
            retire_version(
                os.path.join(config.base_path, str(version)), backup_root, config.backups_to_keep
            )
        state.forget(version)
        result.deleted.append(version)
        log.info("Model %s: version %d was removed remotely; removed it", config.model, version)


def _fetch_version(
    config: SyncConfig,
    store: RemoteStore,
    version: int,
    manifest: bytes,
    plan: SyncPlan,
    limiter: TokenBucket,
    cancelled: Callable[[], bool],
    result: PassResult,
) -> None:
    try:
        entries = parse_manifest(manifest)
    except ManifestError as exc:
        raise StorageError(
            "bad_manifest", f"{store.url}/{version}/{MANIFEST_NAME}: {exc}"
        ) from None
    target = os.path.join(config.base_path, str(version))
    if version in plan.adopt and _matches(target, entries):
        result.adopted.append(version)
        log.info("Model %s: local version %d matches its manifest; kept", config.model, version)
        return
    partial = os.path.join(config.base_path, PARTIAL_DIR, str(version))
    try:
        with storage_errors(f"version {version}"):
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
            check_file_set(
                entries, store.list_files(version) - {MANIFEST_NAME}, f"{store.url}/{version}"
            )
            for rel, expected in sorted(entries.items()):
                dest = os.path.join(partial, *rel.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                md5, nbytes = store.download(version, rel, dest, limiter, cancelled)
                result.bytes_downloaded += nbytes
                if md5 != expected:
                    raise StorageError(
                        "md5_mismatch", f"{rel}: MD5SUMS says {expected}, downloaded {md5}"
                    )
            check_file_set(entries, local_files(partial), partial)
            backup = install_version(
                partial, target, os.path.join(config.base_path, BACKUP_DIR), config.backups_to_keep
            )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    result.downloaded.append(version)
    log.info(
        "Model %s: version %d synced from %s%s",
        config.model,
        version,
        store.url,
        f" (previous copy kept in {backup})" if backup else "",
    )


def _matches(directory: str, entries: Mapping[str, str]) -> bool:
    try:
        if local_files(directory) != set(entries):
            return False
        return all(
            md5_file(os.path.join(directory, *rel.split("/"))) == md5
            for rel, md5 in entries.items()
        )
    except OSError:
        return False
