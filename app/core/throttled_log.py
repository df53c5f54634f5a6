"""A warning logged at most once per interval, with how many times it happened meanwhile.

Data path position: beside the refusals it reports. rest/edge.py (REST connections refused at
the cap), rpc/h2/quota.py (gRPC calls refused for the request buffer quota) and
rpc/h2/frame_quota.py (connections closed for incomplete frames) each note every refusal
here; a flood of refusals must not become a flood of log lines, nor go unreported.
"""

from __future__ import annotations

import logging
import time

LOG_INTERVAL_SECONDS = 10.0


class ThrottledWarning:
    """note() counts an occurrence; it logs a warning when the last one is at least
    `interval_seconds` old, with the count since then as the message's first argument."""

    __slots__ = ("interval_seconds", "logged_at", "logger", "unlogged")

    def __init__(self, logger: logging.Logger,
                 interval_seconds: float = LOG_INTERVAL_SECONDS) -> None:
        self.logger = logger
        self.interval_seconds = interval_seconds
        self.logged_at = float("-inf")
        self.unlogged = 0  # occurrences since the last line

    def note(self, message: str, *args: object) -> None:
        self.unlogged += 1
        now = time.monotonic()
        if now - self.logged_at >= self.interval_seconds:
            self.logger.warning(message, self.unlogged, *args)
            self.logged_at = now
            self.unlogged = 0
