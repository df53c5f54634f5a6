"""Small JSON state files written so a crash never leaves a torn one: the admin API's pins
(admin/api.py) and model sync's per-model record of synced versions (sync/sync_pass.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any


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
