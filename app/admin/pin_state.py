"""Pins kept across restarts: the "pins" section of the admin state file.

Lifecycle position: admin/api.py saves a pin here only once its version loaded (and removes
it on unpin); main.py restores the pins through admin/api.py at start-up. The file's
"traffic" section belongs to lifecycle's ServerCore (the same StateFile).
"""

from __future__ import annotations

import logging

from app.lifecycle.state_file import StateFile

log = logging.getLogger("tfgate.admin")


class PinState:
    """Pins persisted in the admin state file's "pins" section (written atomically: temp
    file + fsync + rename); its "traffic" section belongs to ServerCore (same StateFile)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.file = StateFile(path)

    def load(self) -> dict[str, int]:
        entries = self.file.read().get("pins", {})
        if not isinstance(entries, dict):
            log.error("Ignoring the pins in admin state file %s: not a JSON object", self.path)
            return {}
        pins = {}
        for name, version in entries.items():
            if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
                pins[str(name)] = version
            else:
                log.error("Ignoring the pin of model %s in %s: %r is not a version number",
                          name, self.path, version)
        return pins

    def save(self, pins: dict[str, int]) -> None:
        self.file.write_section("pins", pins)
