"""MD5SUMS manifests, the contract between a publisher and model sync: parse, write and
check them, and `publish()` a local version with its manifest written last.

Lifecycle position: training pipeline -> `tfgate publish` -> remote store; model_sync reads
the manifest to decide what changed and verifies every downloaded file against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import urllib.parse
from collections.abc import Mapping

from app.sync.storage import MANIFEST_NAME, SourceOptions, StorageError, open_stores


class ManifestError(ValueError):
    """An MD5SUMS file that cannot be trusted to describe a version."""


_MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")


def normalize_relpath(path: str) -> str:
    """A manifest path as `a/b/c`; rejects absolute paths and any way out of the version."""
    if path.startswith("/") or "\\" in path:
        raise ManifestError(f"path {path!r} must be relative, with '/' separators")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ManifestError(f"path {path!r} leaves the version directory")
    return "/".join(parts)


def parse_manifest(data: bytes) -> dict[str, str]:
    """md5sum's output format (`<md5>  <path>` or `<md5> *<path>`) -> {path: md5 hex}."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError("MD5SUMS is not UTF-8 text") from None
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("\\"):
            raise ManifestError(f"line {number}: escaped file names are not supported")
        match = _MANIFEST_LINE.match(line)
        if match is None:
            raise ManifestError(f"line {number}: expected '<md5>  <relative path>'")
        path = normalize_relpath(match.group(2))
        if path == MANIFEST_NAME:
            raise ManifestError(f"line {number}: the manifest cannot list itself")
        if path in entries:
            raise ManifestError(f"line {number}: {path} is listed twice")
        entries[path] = match.group(1).lower()
    if not entries:
        raise ManifestError("MD5SUMS lists no files")
    return entries


def format_manifest(entries: Mapping[str, str]) -> bytes:
    return "".join(f"{md5}  {path}\n" for path, md5 in sorted(entries.items())).encode()


def manifest_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_file(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def local_files(directory: str) -> set[str]:
    """Every file under `directory`, relative, with '/' separators."""
    found = set()
    for root, _dirs, files in os.walk(directory):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory)
            found.add(rel.replace(os.sep, "/"))
    return found


def check_file_set(manifest: Mapping[str, str], files: set[str], where: str) -> None:
    """The manifest and the files must name exactly the same set: no extra, none missing."""
    extra, missing = sorted(files - set(manifest)), sorted(set(manifest) - files)
    if extra or missing:
        raise StorageError(
            "manifest_mismatch",
            f"{where} does not match its MD5SUMS: not listed {extra[:5]}, missing {missing[:5]}",
        )


def manifest_for_dir(directory: str) -> dict[str, str]:
    """What `tfgate publish` writes: every file of a local version dir and its md5."""
    files = local_files(directory) - {MANIFEST_NAME}
    if not files:
        raise ManifestError(f"{directory} has no files to publish")
    return {rel: md5_file(os.path.join(directory, *rel.split("/"))) for rel in sorted(files)}


# --- publishing (tfgate publish) ---


def split_version_url(url: str) -> tuple[str, int]:
    """`s3://b/models/m/3` -> (`s3://b/models/m`, 3)."""
    parts = urllib.parse.urlsplit(url)
    head, _, last = parts.path.rstrip("/").rpartition("/")
    if not (last.isascii() and last.isdigit()):
        raise ValueError(f"{url!r}: the last path component must be the version number")
    return urllib.parse.urlunsplit(parts._replace(path=head)), int(last)


def publish(local_dir: str, version_url: str, options: SourceOptions) -> dict[str, str]:
    """Upload a version with its manifest written LAST, so a syncer never accepts a
    version whose files are still arriving. Re-publishing first removes the old
    manifest (syncers skip the version meanwhile) and afterwards any stale file."""
    root, version = split_version_url(version_url)
    entries = manifest_for_dir(local_dir)
    store = open_stores(dataclasses.replace(options, url=root))[0]
    store.delete(version, MANIFEST_NAME)
    try:
        stale = store.list_files(version) - set(entries) - {MANIFEST_NAME}
    except StorageError as exc:
        if exc.reason != "not_found":
            raise
        stale = set()
    for rel in sorted(entries):
        store.upload(os.path.join(local_dir, *rel.split("/")), version, rel)
    for rel in sorted(stale):
        store.delete(version, rel)
    store.write_bytes(version, MANIFEST_NAME, format_manifest(entries))
    return entries
