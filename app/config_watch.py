"""Polls --model_config_file every --model_config_file_poll_wait_seconds and applies a
changed file through Server.reload_model_config (full replacement, as TF Serving does).

A file that fails to parse is logged and skipped: the running config stays in force.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app import model_config
from app.registry import ModelConfig

log = logging.getLogger("tfgate.config_watch")


class ConfigWatcher:
    def __init__(
        self,
        path: str,
        poll_wait_seconds: float,
        apply: Callable[[list[ModelConfig]], Awaitable[None]],
    ) -> None:
        self.path = path
        self.poll_wait_seconds = poll_wait_seconds
        self.apply = apply
        self._last_text: str | None = None
        self._task: asyncio.Task[None] | None = None

    def remember(self, text: str) -> None:
        self._last_text = text

    def start(self) -> None:
        if self.poll_wait_seconds > 0:
            self._task = asyncio.create_task(self._poll(), name="config-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check_once(self) -> bool:
        """Apply the file if its text changed; True when a new config was applied."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            log.error("Cannot read model config file %s: %s", self.path, exc.strerror)
            return False
        if text == self._last_text:
            return False
        self._last_text = text
        try:
            configs = model_config.parse_model_server_config(text)
        except model_config.ConfigError as exc:
            log.error("Not applying %s: %s", self.path, exc)
            return False
        log.info("Model config file %s changed: applying %d model(s)", self.path, len(configs))
        await self.apply(configs)
        return True

    async def _poll(self) -> None:
        """Bounded and cancellable; a failure is logged, and the file is applied again once
        its text changes (re-applying the same text would fail the same way)."""
        while True:
            await asyncio.sleep(self.poll_wait_seconds)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "Applying the model config file failed; it is applied again when it changes"
                )
