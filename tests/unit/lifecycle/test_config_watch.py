"""ConfigWatcher: what the --model_config_file poll applies, and when it tries again."""

from __future__ import annotations

import asyncio
import logging
import pathlib

import pytest

from app.core.errors import Code, ServingError
from app.lifecycle.config_watch import ConfigWatcher
from app.settings.model_config import ModelConfig

CONFIG = 'model_config_list { config { name: "%s" base_path: "/m" model_platform: "tensorflow" } }'


class Applier:
    def __init__(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.applied: list[list[str]] = []

    async def __call__(self, configs: list[ModelConfig]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise ServingError(Code.FAILED_PRECONDITION, "Request to assign label to version 2")
        self.applied.append([c.name for c in configs])


async def test_a_refused_config_is_tried_again_until_it_applies(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(CONFIG % "a")
    apply = Applier(refusals=2)
    watcher = ConfigWatcher(str(path), 1, apply)
    for _ in range(2):  # the same text: refused twice (TF Serving's poller also retries)
        with pytest.raises(ServingError):
            await watcher.check_once()
    assert await watcher.check_once() is True
    assert apply.applied == [["a"]]
    assert await watcher.check_once() is False  # applied: unchanged text is left alone
    path.write_text(CONFIG % "b")
    assert await watcher.check_once() is True
    assert apply.applied == [["a"], ["b"]]


async def test_unparsable_text_is_logged_and_the_poll_goes_on(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "models.config"
    path.write_text("not a config")
    apply = Applier(refusals=1)
    watcher = ConfigWatcher(str(path), 0.05, apply)
    caplog.set_level(logging.INFO, logger="tfgate.config_watch")
    watcher.start()
    try:
        await asyncio.sleep(0.2)
        assert apply.applied == []
        path.write_text(CONFIG % "c")  # refused once, applied at a later poll
        for _ in range(100):
            if apply.applied:
                break
            await asyncio.sleep(0.02)
    finally:
        await watcher.close()
    assert apply.applied[:1] == [["c"]]
    assert "Not applying" in caplog.text and "Request to assign label" in caplog.text
    assert "Traceback" not in caplog.text
