"""Small JSON state files written so a crash never leaves a torn one: the admin state file
(admin/api.py's pins and ServerCore's traffic rules, one section each) and model sync's
per-model record of synced versions (sync/sync_pass.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from typing import Any

log = logging.getLogger("tfgate.admin")


def write_json_atomically(
    path: str, document: Any, *, temp_prefix: str, sort_keys: bool = False
) -> None:
    """Write `document` to a temporary file beside `path`, fsync it, then rename it over
    `path`. The directory is created if missing; the temporary file never outlives a failure."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1, sort_keys=sort_keys)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StateFile:
    """The admin state file: one JSON document whose sections ("pins", "traffic") are
    owned by different writers (admin's pins, ServerCore's traffic rules). Each write
    replaces one section and keeps the others. Event-loop only."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._document: dict[str, Any] | None = None

    def read(self) -> dict[str, Any]:
        """The document as last read or written ({} without a path, a file, or when it is
        unreadable: the caller logs what it cannot use)."""
        if self._document is None:
            self._document = {}
            if self.path and os.path.exists(self.path):
                try:
                    with open(self.path, encoding="utf-8") as f:
                        data = json.load(f)
                except (OSError, ValueError) as exc:
                    log.error("Ignoring unreadable admin state file %s: %s", self.path, exc)
                else:
                    if isinstance(data, dict):
                        self._document = data
                    else:
                        log.error("Ignoring admin state file %s: not a JSON object", self.path)
        return self._document

    def write_section(self, name: str, value: Any) -> None:
        """Replace section `name` and write the file atomically; OSError leaves both the
        file and the document in memory as they were."""
        if not self.path:
            return
        document = {**self.read(), name: value}
        write_json_atomically(self.path, document, temp_prefix=".tfgate-state.", sort_keys=True)
        self._document = document
