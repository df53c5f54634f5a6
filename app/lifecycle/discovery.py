"""Version discovery: polls each model's base path for numeric version directories.

Lifecycle position: discovery -> ServerCore.aspire_versions() (TF Serving's aspired-versions
callback) -> registry.set_aspired_versions() -> manager.reconcile(). This is the only module
that finds which versions exist (model sync only writes directories). Children whose names
parse as int64 are versions (`00000123` == 123); anything else, including sync's `.partial`
area, is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable

from app.core.types import INT64_MAX
from app.lifecycle.registry import Registry

# (model name, {version: directory} on disk now, versions whose directory was replaced)
AspiredVersionsCallback = Callable[[str, dict[int, str], set[int]], None]

log = logging.getLogger("tfgate.discovery")


def list_versions(base_path: str) -> dict[int, str] | None:
    """{version: directory} under base_path; None when base_path does not exist or cannot be
    read (the caller logs it and tries again at the next poll)."""
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return None
    versions: dict[int, str] = {}
    for entry in entries:
        name = entry.name
        # ASCII digits only: str.isdigit() also takes "³" or "٨", which int() refuses or reads
        # as another number; TF Serving parses version names as plain int64.
        if not (name.isascii() and name.isdigit()) or not entry.is_dir():
            continue
        version = int(name)
        if version > INT64_MAX:
            continue
        if version in versions:
            log.warning("Duplicate version directories for version %d under %s", version, base_path)
            continue
        versions[version] = entry.path
    return versions


def version_dir_identity(path: str) -> tuple[int, int, int]:
    """Changes when a version directory is replaced in place: (dir inode, saved_model.pb
    inode, its mtime). A rename of a new directory into place changes the first. Cheap
    (two stats per version per poll); the cache's content digest is
    app/lifecycle/fingerprint.version_fingerprint, computed only before a load."""
    try:
        directory = os.stat(path).st_ino
    except OSError:
        return (0, 0, 0)
    try:
        st = os.stat(os.path.join(path, "saved_model.pb"))
    except OSError:
        return (directory, 0, 0)
    return (directory, st.st_ino, st.st_mtime_ns)


class Discovery:
    """Scans the configured base paths once or every poll_wait_seconds; reports a model's
    versions to `on_versions` when what is on disk changed. Reads the registry, never
    writes it."""

    def __init__(
        self,
        registry: Registry,
        on_versions: AspiredVersionsCallback,
        poll_wait_seconds: float,
    ) -> None:
        self.registry = registry
        self.on_versions = on_versions
        self.poll_wait_seconds = poll_wait_seconds
        self._seen: dict[str, dict[int, tuple[int, int, int]] | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()

    def scan(self, names: Iterable[str] | None = None) -> None:
        """Scan `names` (None: every configured model). A model dropped from the config is
        never scanned: that would remember its directories, and re-adding it later would
        then look like nothing changed on disk and load nothing."""
        for name in list(self.registry.models if names is None else names):
            model = self.registry.configured(name)
            if model is None:
                continue
            base_path = model.config.base_path
            found = list_versions(base_path)
            if found is None:
                if name not in self._warned:
                    log.error("Could not find base path %s for servable %s", base_path, name)
                    self._warned.add(name)
                continue
            self._warned.discard(name)
            if not found and self._seen.get(name) != {}:
                log.warning(
                    "No versions of servable %s found under base path %s. Did you forget to "
                    "name your leaf directory as a number (eg. '/1/')?",
                    name,
                    base_path,
                )
            identities = {v: version_dir_identity(p) for v, p in found.items()}
            seen = self._seen.get(name)
            if seen == identities:
                continue
            replaced = {v for v, ident in identities.items() if (seen or {}).get(v, ident) != ident}
            self._seen[name] = identities
            self.on_versions(name, found, replaced)

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def start(self) -> None:
        if self.poll_wait_seconds > 0:
            self._task = asyncio.create_task(self._poll(), name="discovery")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        """Bounded and cancellable: one scan per interval; failures are logged and retried."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self.scan()
            except Exception:
                log.exception("version discovery failed; retrying next interval")
            await asyncio.sleep(max(0.0, self.poll_wait_seconds - (loop.time() - started)))
