"""app/core/throttled_log.py: a refusal flood is one warning per interval, each with how many
happened since the last one, and none goes uncounted."""

from __future__ import annotations

import logging

import pytest

from app.core import throttled_log
from app.core.throttled_log import ThrottledWarning


def test_one_line_per_interval_with_the_count_since_the_last(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    monkeypatch.setattr(throttled_log.time, "monotonic", lambda: now[0])
    warning = ThrottledWarning(logging.getLogger("tfgate.test"), interval_seconds=10.0)
    with caplog.at_level(logging.WARNING, logger="tfgate.test"):
        warning.note("%d refused, the latest from %s", "a")  # the first: logged at once
        for peer in ("b", "c", "d"):
            now[0] += 3.0
            warning.note("%d refused, the latest from %s", peer)  # 103, 106, 109: held back
        now[0] += 1.0
        warning.note("%d refused, the latest from %s", "e")  # 110: 10 s after the first line
    assert [r.getMessage() for r in caplog.records] == [
        "1 refused, the latest from a", "4 refused, the latest from e"]
    assert warning.unlogged == 0
